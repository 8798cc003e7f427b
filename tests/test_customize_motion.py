"""customize_motion.py (docs/method.md#motion-customisation): clips read from mp4 files and frame folders, the
trained parameter set of each family counted independently, a deterministic customisation, its folder loaded by
SDSReward and sac_sds.py, resume after a signal, and every bad input as one line with nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import customize_motion as cm
import sac_sds
from conftest import ROOT, run_script, save_tiny_zeroscope


def write_clips(folder, n=3, frames=10, size=24, seed=0, video=True):
    """n clips as frame folders (png) and, with video, one more as an mp4 file."""
    import imageio.v2 as imageio

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(n):
        (folder / f"clip{c}").mkdir(exist_ok=True)
        for f in range(frames):
            imageio.imwrite(folder / f"clip{c}" / f"{f:03d}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    if video:
        with imageio.get_writer(folder / "extra.mp4", fps=8, macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in range(frames + 2):
                w.append_data(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips") / "demos")


def args_for(tiny_sd, tiny_motion_adapter, clips, out, **kw):
    base = dict(model_id=str(tiny_sd), motion_adapter_id=str(tiny_motion_adapter), clips=str(clips), frames=4,
                steps=6, batch_size=4, out=str(out), threads=1, progress=False, checkpoint_every=0)
    return cm.Args(**{**base, **kw})


def test_clips_are_read_from_frame_folders_and_videos(clips, tiny_sd, tiny_motion_adapter):
    reward, window = cm.load_model(args_for(tiny_sd, tiny_motion_adapter, clips, "x"), torch.device("cpu"), ["a"])
    read = dict(cm.read_clips(str(clips), window, cm.Args(frames=4), "--clips", reward))
    assert sorted(read) == ["clip0", "clip1", "clip2", "extra"]
    assert read["clip0"].shape == (10, 24, 24, 3) and read["extra"].shape[:1] == (12,)
    import imageio.v2 as imageio

    assert np.array_equal(read["clip1"][3], imageio.imread(clips / "clip1" / "003.png"))  # lossless frames as saved


def test_the_trained_parameters_are_the_temporal_layers_and_the_cross_attention_keys_and_values(
        tiny_sd, tiny_motion_adapter, tmp_path):
    """Counted independently: AnimateDiff's motion modules (and ZeroScope's temporal blocks), plus to_k and to_v of
    every diffusers Attention that attends to the text (is_cross_attention) outside them."""
    from diffusers.models.attention_processor import Attention

    def cross_kv(denoiser, temporal_prefixes):
        out = set()
        for name, module in denoiser.named_modules():
            if isinstance(module, Attention) and module.is_cross_attention and not any(
                    p in name for p in temporal_prefixes):
                out |= {f"{name}.{proj}.{leaf}" for proj in ("to_k", "to_v")
                        for leaf, _ in getattr(module, proj).named_parameters()}
        return out

    animatediff = cm.load_model(args_for(tiny_sd, tiny_motion_adapter, "x", "x"), torch.device("cpu"), ["a"])[0]
    denoiser = animatediff.family.denoiser
    motion = {n for n, _ in denoiser.named_parameters() if n.split(".")[2:3] == ["motion_modules"]
              or n.startswith("mid_block.motion_modules")}
    assert motion and set(cm.trained_parameters(denoiser, ("temporal",))) == motion
    assert set(cm.trained_parameters(denoiser, ("cross-kv",))) == cross_kv(denoiser, ("motion_modules",))
    both = cm.trained_parameters(denoiser, ("temporal", "cross-kv"))
    assert len(both) == len(motion) + len(cross_kv(denoiser, ("motion_modules",)))

    zeroscope = save_tiny_zeroscope(tmp_path / "zeroscope")
    zs = cm.load_model(cm.Args(model_id=str(zeroscope)), torch.device("cpu"), ["a"])[0].family.denoiser
    temporal = {n for n, _ in zs.named_parameters() if ".temp_attentions." in n or ".temp_convs." in n
                or n.startswith("transformer_in.")}
    assert temporal and set(cm.trained_parameters(zs, ("temporal",))) == temporal
    assert set(cm.trained_parameters(zs, ("cross-kv",))) == cross_kv(zs, ("temp_attentions", "transformer_in"))


def test_a_short_customisation_is_deterministic_and_its_folder_loads(clips, tiny_sd, tiny_motion_adapter, tmp_path):
    infos = [cm.customize(args_for(tiny_sd, tiny_motion_adapter, clips, tmp_path / f"run{i}")) for i in (0, 1)]
    files = [(tmp_path / f"run{i}" / sac_sds.CUSTOMIZATION).read_bytes() for i in (0, 1)]
    assert files[0] == files[1] and infos[0]["final_loss"] == infos[1]["final_loss"]
    folder = tmp_path / "run0"
    config = json.loads((folder / "tadpole_config.json").read_text())
    assert config["phrase"] == "a video of sks" and config["context_size"] == 4
    from safetensors.torch import load_file

    saved = load_file(folder / sac_sds.CUSTOMIZATION)
    assert len(saved) == infos[0]["tensors"] and sum(v.numel() for v in saved.values()) == infos[0]["parameters"]
    base = sac_sds.SDSReward.from_pretrained(str(tiny_sd), [config["phrase"]], motion_adapter_id=str(tiny_motion_adapter))
    custom = sac_sds.SDSReward.from_pretrained(str(tiny_sd), [config["phrase"]],
                                               motion_adapter_id=str(tiny_motion_adapter), customization=str(folder))
    params = dict(custom.family.denoiser.named_parameters())
    base_params = dict(base.family.denoiser.named_parameters())
    for name, tensor in saved.items():  # the trained tensors replace the model's, the others stay
        assert torch.equal(params[name], tensor.float()) and not torch.equal(base_params[name], tensor.float())
    untouched = [n for n in params if n not in saved]
    assert untouched and all(torch.equal(params[n], base_params[n]) for n in untouched)
    assert custom.context_size == 4 and base.context_size == 16  # the folder's window
    z, noise = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    assert not torch.allclose(custom(z, 500, noise), base(z, 500, noise))


def test_sac_sds_trains_on_a_customised_reward(clips, tiny_sd, tiny_motion_adapter, in_tmp):
    cm.customize(args_for(tiny_sd, tiny_motion_adapter, clips, in_tmp / "custom"))
    common = ["--env-id", "Pendulum-v1", "--model-id", str(tiny_sd), "--motion-adapter-id", str(tiny_motion_adapter),
              "--customization", "custom", "--total-timesteps", "120", "--learning-starts", "60", "--batch-size", "16",
              "--eval-episodes", "0", "--reward-batch-size", "16", "--threads", "1", "--no-progress"]
    proc = run_script("sac_sds.py", *common, cwd=in_tmp, check=False)
    assert proc.returncode == 2 and '--prompt "a video of sks"' in proc.stderr  # the folder's phrase, suggested
    run_script("sac_sds.py", *common, "--prompt", "a video of sks", "--run-name", "c", cwd=in_tmp)
    saved = json.loads((in_tmp / "runs" / "c" / "args.json").read_text())
    assert saved["customization"] == "custom"
    assert torch.load(in_tmp / "runs" / "c" / "checkpoint.pt", weights_only=True)["global_step"] == 120
    scored = {}
    for name, extra in (("with", ["--sds-customization", "custom"]), ("without", [])):
        run_script("eval_videos.py", "runs/c", "--episodes", "1", "--clip-model-id", "None", "--sds-model-id",
                   str(tiny_sd), "--sds-motion-adapter-id", str(tiny_motion_adapter), "--sds-frame-stride", "1",
                   *extra, "--out", f"ev_{name}", "--no-progress", cwd=in_tmp)
        scored[name] = json.loads((in_tmp / f"ev_{name}" / "runs" / "c.json").read_text())["sds_score"]
    assert np.isfinite(scored["with"]) and scored["with"] != scored["without"]  # eval_videos scores with the folder


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_as_an_uninterrupted_run(clips, tiny_sd, tiny_motion_adapter,
                                                                              in_tmp):
    flags = ["--model-id", str(tiny_sd), "--motion-adapter-id", str(tiny_motion_adapter), "--clips", str(clips),
             "--frames", "4", "--batch-size", "2", "--threads", "1", "--no-progress", "--steps", "60",
             "--checkpoint-every", "5"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "customize_motion.py"), *flags, "--out", "stopped"],
                            cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (in_tmp / "stopped" / "checkpoint.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C (SIGTERM and SIGUSR1 take the same path: the SAC scripts' tests)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cm.EXIT_CTRL_C and "checkpoint saved" in err and "Traceback" not in err, err
    assert not (in_tmp / "stopped" / sac_sds.CUSTOMIZATION).exists()
    stopped_at = torch.load(in_tmp / "stopped" / "checkpoint.pt", weights_only=True)["state"]["step"]
    assert 0 < stopped_at < 60
    args = args_for(tiny_sd, tiny_motion_adapter, clips, in_tmp / "stopped", batch_size=2, steps=60, checkpoint_every=5)
    with pytest.raises(sac_sds.UserError, match="--resume"):  # not silently restarted
        cm.customize(args)
    cm.customize(cm.Args(**{**args.__dict__, "resume": True}))
    cm.customize(cm.Args(**{**args.__dict__, "out": str(in_tmp / "straight")}))
    assert not (in_tmp / "stopped" / "checkpoint.pt").exists()
    assert ((in_tmp / "stopped" / sac_sds.CUSTOMIZATION).read_bytes()
            == (in_tmp / "straight" / sac_sds.CUSTOMIZATION).read_bytes())  # the same customisation, stopped or not


@pytest.mark.parametrize("flags, message", [
    ({"clips": "nowhere"}, "no such folder"),
    ({"clips": "EMPTY"}, "no clips"),
    ({"clips": "SHORT"}, "a window takes 4"),
    ({"clips": "BROKEN"}, "cannot read the video"),
    ({"phrase": "a pendulum swinging"}, "does not contain the token"),
    ({"motion_adapter_id": None}, "is an image model"),
    ({"regularization": "NOCAPTIONS"}, "captions.json"),
    ({"frames": 0}, "--frames must be at least 1"),
    pytest.param({"device": "cuda"}, "torch sees no CUDA device",  # the SAC scripts' device check
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")),
])
def test_bad_input_is_refused_and_nothing_written(flags, message, clips, tiny_sd, tiny_motion_adapter, in_tmp):
    (in_tmp / "EMPTY").mkdir()
    write_clips(in_tmp / "SHORT", n=1, frames=2, video=False)
    (in_tmp / "BROKEN").mkdir()
    (in_tmp / "BROKEN" / "clip.mp4").write_bytes(b"not a video")
    write_clips(in_tmp / "NOCAPTIONS", n=1, video=False)
    args = args_for(tiny_sd, tiny_motion_adapter, clips, in_tmp / "out")
    with pytest.raises(sac_sds.UserError, match=message):
        cm.customize(cm.Args(**{**args.__dict__, **flags}))
    assert not (in_tmp / "out").exists()


def test_bad_input_from_the_command_line_is_one_line_exit_2(clips, tiny_sd, in_tmp):
    proc = run_script("customize_motion.py", "--model-id", str(tiny_sd), "--clips", str(clips), "--frames", "4",
                      "--out", "out", "--no-progress", cwd=in_tmp, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "is an image model" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (in_tmp / "out").exists()


def test_a_customisation_made_for_another_model_is_refused_in_one_line(clips, tiny_sd, tiny_motion_adapter, tmp_path):
    cm.customize(args_for(tiny_sd, tiny_motion_adapter, clips, tmp_path / "c"))
    zeroscope = save_tiny_zeroscope(tmp_path / "zeroscope")
    with pytest.raises(sac_sds.UserError, match="was made for another model"):
        sac_sds.SDSReward.from_pretrained(str(zeroscope), ["a video of sks"], customization=str(tmp_path / "c"))
