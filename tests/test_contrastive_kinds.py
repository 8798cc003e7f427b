"""sac_clip.py's other contrastive kinds: SigLIP (its own features, text padded to its full length) and X-CLIP (a
video-text model scored in sliding windows). Rewards against the models called directly through their processors,
the batched preprocessing against each processor, frame order changing an X-CLIP reward, the windows' per-frame
means, the labeler in a run, the kind read from config.json, and bad input as one line. Models: conftest's
tiny_siglip and tiny_xclip, loaded through from_pretrained(folder) as --clip-model-id loads them."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel, XCLIPModel

import sac_clip
from conftest import ROOT, run_script, scalars
from test_sac_clip import noise_frames, pendulum_frames

sys.path.insert(0, str(ROOT / "benchmarks"))
import pendulum_world  # noqa: E402  (the motion world's clip renderer)

SPIN, REST, BASE = "a pendulum spinning", "a pendulum at rest", "a pendulum"


def unit(x: torch.Tensor) -> np.ndarray:
    x = x.double().numpy()
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def formula(x, g, b, alpha):
    """VLM-RM in float64 numpy: 1 - |(x - g) P|^2 / 2, P = alpha d d^T / |d|^2 + (1 - alpha) I, d = g - b."""
    d = g - b
    P = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(len(d))
    return 1 - 0.5 * (((x - g) @ P) ** 2).sum(-1)


@pytest.fixture(scope="module")
def renders() -> np.ndarray:
    """Pendulum-v1 frames (500x500) at 10 angles around the circle: a spin, in order."""
    return pendulum_frames(np.linspace(0, 2 * np.pi, 10, endpoint=False))


# ----- SigLIP -----
def test_siglip_reward_is_the_formula_on_its_own_features(tiny_siglip, renders):
    """Against SiglipModel's get_image_features / get_text_features through its processor, the text padded to 64
    tokens as SigLIP is used (its text tower pools the last position: padding to the longest prompt gives another
    embedding, which the last assertion shows)."""
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    tokenizer, processor = AutoTokenizer.from_pretrained(tiny_siglip), AutoImageProcessor.from_pretrained(tiny_siglip)
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_siglip), [SPIN], [BASE], alpha=0.5)
    assert reward.kind == "siglip" and isinstance(reward.model, SiglipModel) and not reward.video
    with torch.no_grad():
        x = unit(model.get_image_features(**processor(images=list(renders), return_tensors="pt")).pooler_output)
        ids = tokenizer([SPIN, BASE], padding="max_length", max_length=64, return_tensors="pt").input_ids
        t = unit(model.get_text_features(input_ids=ids).pooler_output)
        short = unit(model.get_text_features(**tokenizer([SPIN], padding=True, return_tensors="pt")).pooler_output)
    expected = formula(x, t[0], t[1], 0.5)
    np.testing.assert_allclose(reward(renders).numpy(), expected, atol=1e-5)
    assert expected.std() > 1e-3
    assert np.abs(short[0] - t[0]).max() > 1e-2  # the padding matters


# ----- X-CLIP -----
@pytest.fixture(scope="module")
def xclip(tiny_xclip):
    model = XCLIPModel.from_pretrained(tiny_xclip).eval()
    return model, AutoTokenizer.from_pretrained(tiny_xclip), AutoImageProcessor.from_pretrained(tiny_xclip)


def xclip_window(xclip, frames: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One window's video embedding (D,) and its video-conditioned prompt embeddings (P, D), from XCLIPModel's
    forward through its processor, normalised."""
    model, tokenizer, processor = xclip
    with torch.no_grad():
        out = model(**tokenizer(prompts, padding=True, return_tensors="pt"),
                    **processor([list(frames)], return_tensors="pt"))
        logits = out.logits_per_video[0] / model.logit_scale.exp()  # the model's own similarity: the cosines
    x, t = unit(out.video_embeds[0]), unit(out.text_embeds[0])
    np.testing.assert_allclose(t @ x, logits.double().numpy(), atol=1e-5)
    return x, t


def test_xclip_window_reward_is_the_models_own_video_text_similarity(tiny_xclip, xclip, renders):
    """One window of num_frames (4) frames: alpha 0 and one prompt gives X-CLIP's logits_per_video / logit_scale;
    alpha 0.5 the formula on its video embedding and its video-conditioned goal and baseline embeddings."""
    frames = renders[:4]
    plain = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN], alpha=0.0)
    assert plain.kind == "xclip" and plain.video and plain.context_size == 4 and isinstance(plain.model, XCLIPModel)
    x, t = xclip_window(xclip, frames, [SPIN])
    np.testing.assert_allclose(plain(frames).numpy(), np.full(4, x @ t[0]), atol=1e-5)
    projected = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN, REST], [BASE], alpha=0.5,
                                                    weights=[1.0, -0.5])
    x, t = xclip_window(xclip, frames, [SPIN, REST, BASE])
    g = (t[0] - 0.5 * t[1]) / 1.5
    np.testing.assert_allclose(projected(frames).numpy(), np.full(4, formula(x[None], g, t[2], 0.5)[0]), atol=1e-5)


def test_xclip_frame_order_changes_the_reward(tiny_xclip, renders):
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN])
    forward, backward = reward(renders[:4]).numpy(), reward(renders[:4][::-1].copy()).numpy()
    assert abs(forward[0] - backward[0]) > 1e-4, (forward, backward)  # the same frames in another order


@pytest.mark.parametrize("frame_stride", [1, 2])
def test_xclip_frame_reward_is_the_mean_over_its_windows(tiny_xclip, xclip, renders, frame_stride):
    """10 frames, windows of 4 every 2 frames of each residue mod frame_stride (frame stride 2: frames 0, 2, .., 8
    and 1, 3, .., 9, 5 each: windows [0, 4) and [1, 5) of them), each scored by the model directly; a frame's reward
    is the mean over the windows that hold it. A schedule scores a window on its last frame's goal."""
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN])
    reward.stride, reward.frame_stride = 2, frame_stride
    sums, count = np.zeros(10), np.zeros(10)
    for residue in range(frame_stride):
        idx = np.arange(residue, 10, frame_stride)
        for a, b in sac_clip.windows(len(idx), 4, 2):
            x, t = xclip_window(xclip, renders[idx[a:b]], [SPIN])
            sums[idx[a:b]] += x @ t[0]
            count[idx[a:b]] += 1
    assert count.max() > 1 and count.min() == 1  # frames in one and in several windows
    got = reward(renders).numpy()
    np.testing.assert_allclose(got, sums / count, atol=1e-5)
    assert np.unique(got.round(5)).size > 2
    # a schedule: windows ending before step 5 on SPIN, the others on REST
    scheduled = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN, REST], schedule=True)
    scheduled.stride, scheduled.frame_stride = 2, frame_stride
    entry = (np.arange(10) >= 5).astype(int)
    sums[:], count[:] = 0, 0
    for residue in range(frame_stride):
        idx = np.arange(residue, 10, frame_stride)
        for a, b in sac_clip.windows(len(idx), 4, 2):
            x, t = xclip_window(xclip, renders[idx[a:b]], [SPIN, REST])
            sums[idx[a:b]] += x @ t[entry[idx[b - 1]]]
            count[idx[a:b]] += 1
    np.testing.assert_allclose(scheduled(renders, torch.as_tensor(entry)).numpy(), sums / count, atol=1e-5)


def test_xclip_episode_shorter_than_a_window_repeats_its_last_frame(tiny_xclip, renders):
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN])
    short = renders[:3]
    padded = np.concatenate([short, short[-1:]])
    np.testing.assert_allclose(reward(short).numpy(), reward(padded).numpy()[:3], atol=1e-6)


# ----- preprocessing, batched on the device, against each kind's processor -----
@pytest.mark.parametrize("uint8_resize", [True, False], ids=["cpu-uint8-kernel", "float-two-pass"])
@pytest.mark.parametrize("kind", ["siglip", "xclip"])
def test_batched_preprocessing_matches_the_processor(tiny_siglip, tiny_xclip, renders, kind, uint8_resize):
    """SigLIP's processor (32x32 bicubic, no crop, mean and std 0.5) and X-CLIP's (VideoMAE: shortest side 36,
    bilinear, center crop 32), for both resize paths (the CPU's uint8 kernel, and the float one CUDA runs); the
    tolerance of tests/test_sac_clip.py's CLIP check (PIL's fixed-point filter weights)."""
    folder = tiny_siglip if kind == "siglip" else tiny_xclip
    reward = sac_clip.CLIPReward.from_pretrained(str(folder), [SPIN])
    reward.uint8_resize = uint8_resize
    processor = AutoImageProcessor.from_pretrained(folder)
    level = 1 / 255 / np.min(processor.image_std)
    for batch in [renders[:4], noise_frames(4, 256, 256, seed=1), noise_frames(4, 120, 200, seed=2)]:
        if kind == "siglip":
            expected = processor(images=list(batch), return_tensors="pt")["pixel_values"].numpy()
        else:
            expected = processor([list(batch)], return_tensors="pt")["pixel_values"][0].numpy()  # one video
        got = reward.preprocess(torch.from_numpy(batch)).numpy()
        assert got.shape == expected.shape and got.dtype == np.float32
        diff = np.abs(got - expected)
        assert diff.max() <= 2 * level + 1e-5, diff.max() / level
        assert (diff > 1e-5).mean() < 0.01, (diff > 1e-5).mean()


# ----- the labeler and a run -----
def test_video_labeler_scores_each_finished_episode_whole(tiny_xclip, renders):
    """Two envs, episodes of 10 and 6 frames: nothing is labelled before an episode ends; then each episode gets
    CLIPReward.episode's rewards of its own frames; a flush labels the unfinished one as a cut video."""
    args = sac_clip.Args(prompt=(SPIN,), clip_model_id=str(tiny_xclip), env_id="Pendulum-v1", reward_batch_size=8,
                         frame_stride=1, stride=2)
    labeler = sac_clip.build_reward(args, torch.device("cpu"))
    queue = sac_clip.TransitionQueue(2)
    lengths = {0: 10, 1: 6}
    for step in range(10):
        for env in (0, 1):
            if step < lengths[env] or env == 0:
                episode = env if step < lengths[env] else 2
                queue.push({"obs": np.zeros(3, np.float32), "next_obs": np.zeros(3, np.float32),
                            "action": np.zeros(1), "env_reward": -1.0, "terminated": False,
                            "done": step == lengths[env] - 1, "env": env, "episode": episode, "episode_step": step + 1,
                            "frame": renders[(step + 3 * env) % 10]})
        if step == 4:
            assert labeler.label(queue) is None  # no episode has ended
    batch = labeler.label(queue)
    assert list(batch["env"]) == [0] * 10 + [1] * 6 and len(queue) == 0
    model = labeler.model
    np.testing.assert_allclose(batch["reward"][:10], model(renders).numpy(), atol=1e-6)
    np.testing.assert_allclose(batch["reward"][10:], model(renders[[(s + 3) % 10 for s in range(6)]]).numpy(),
                               atol=1e-6)


def test_pendulum_run_with_an_xclip_reward(in_tmp, tiny_xclip):
    run_script("sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", str(tiny_xclip), "--prompt", SPIN,
               "--total-timesteps", "400", "--learning-starts", "200", "--batch-size", "32", "--eval-every", "0",
               "--eval-episodes", "0", "--log-every", "200", "--no-progress", "--threads", "1", "--run-name", "x",
               cwd=in_tmp)
    run = in_tmp / "runs" / "x"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["replay_buffer"]["size"] == 400
    rewards = ckpt["replay_buffer"]["data"]["reward"][:400, 0].double().numpy()
    returns = [v for _, v in scalars(run)["charts/clip_return"]]
    assert len(returns) == 2 and sum(returns) == pytest.approx(rewards.sum(), abs=1e-3)
    assert rewards.std() > 1e-4


# ----- kinds and bad input -----
@pytest.mark.parametrize("case, message", [
    ("window", "is longer than Pendulum-v1's episodes (5 steps)"),
    ("stride", "--stride 9: give 1 to 4"),
    ("pipeline", "is a diffusers pipeline"),
    ("siglip2", "SigLIP 2's NaFlex"),
    ("bert", "is a 'bert' checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(in_tmp, tiny_xclip, tiny_sd, monkeypatch, capsys, case, message):
    model, flags = str(tiny_xclip), []
    if case == "window":  # 4 frames every 2 steps (8 frames/s at dt 0.05) span 7 steps
        flags = ["--max-episode-steps", "5"]
    elif case == "stride":
        flags = ["--stride", "9"]
    elif case == "pipeline":
        model = str(tiny_sd)
    else:  # a folder whose config.json names another model type
        folder = in_tmp / case
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": case}))
        model = str(folder)
    monkeypatch.setattr("sys.argv", ["sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", model, "--prompt",
                                     SPIN, "--no-progress", *flags])
    with pytest.raises(SystemExit) as exit_:
        sac_clip.main(sac_clip.Args, sac_clip.build_reward)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and message in last, err


# ----- eval_reward.py and eval_videos.py take them as they take CLIP -----
def test_eval_reward_scores_clips_with_siglip_and_xclip(tmp_path, tiny_siglip, tiny_xclip, one_thread):
    """eval_reward.py on clip folders (8 frames each) with both kinds: each clip's mean reward is CLIPReward's on
    its frames (X-CLIP: in Pendulum-v1's windows, 4 frames every 2 env steps)."""
    import eval_reward
    from customize_motion import read_frame_folder

    clips = tmp_path / "clips"
    pendulum_world.reward_clips(pendulum_world.Args(clips=4, clip_steps=8, out=str(clips)))
    args = eval_reward.Args(behaviours=(str(clips / "spinning"), str(clips / "frozen")), env_id="Pendulum-v1",
                            clip_model_id=(str(tiny_siglip), f"{tiny_xclip} --stride 1"), prompt=(SPIN,),
                            out=str(tmp_path / "er"), device="cpu", progress=False, threads=1)
    summary = eval_reward.evaluate(args)
    assert [r["reward"] for r in summary["rows"]] == [f"clip {tiny_siglip}", f"clip {tiny_xclip} --stride 1"]
    with open(tmp_path / "er" / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    siglip = sac_clip.CLIPReward.from_pretrained(str(tiny_siglip), [SPIN])
    xclip = sac_clip.CLIPReward.from_pretrained(str(tiny_xclip), [SPIN])
    xclip.stride, xclip.frame_stride = 1, 2
    for row in rows:
        frames = read_frame_folder(clips / row["behaviour"].split(":")[1] / row["clip"], "clip")
        for model, spec in ((siglip, str(tiny_siglip)), (xclip, f"{tiny_xclip} --stride 1")):
            assert float(row[f"clip {spec} | {SPIN} | mean"]) == pytest.approx(float(model(frames).mean()), abs=1e-5)
    assert "AUC" in (tmp_path / "er" / "summary.md").read_text()


@pytest.mark.parametrize("kind", ["siglip", "xclip"])
def test_eval_videos_clip_score_with_siglip_and_xclip(tmp_path, tiny_siglip, tiny_xclip, renders, kind):
    """eval_videos.py's CLIP score under another kind: the mean cosine of every frame with the prompt (X-CLIP: a
    frame's mean over the windows of the run's env, as sac_clip.py would score them); a schedule on each step's
    entry."""
    import eval_videos

    folder = str(tiny_siglip if kind == "siglip" else tiny_xclip)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text(json.dumps(
        {"env_id": "Pendulum-v1", "exp_name": "sac_clip", "prompt": [], "prompt_schedule": f"0:{SPIN};4:{REST}"}))
    run = eval_videos.read_run(str(tmp_path / "run"), None)
    scorer = eval_videos.ClipScorer(folder, torch.device("cpu"), "fp32")
    got = scorer(renders, run, 4)
    single = {}
    for p in (SPIN, REST):
        model = sac_clip.CLIPReward.from_pretrained(folder, [p])
        model.frame_stride = 2  # Pendulum-v1 at 8 frames/s
        single[p] = model(renders).numpy()
    expected = [single[SPIN if k == 0 else REST][j] for j, k in enumerate(run.entries(len(renders)))]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(single[SPIN] - single[REST]).max() > 1e-4


# ----- the motion world's contrastive pair (demo/train_contrastive_models.py) -----
VIDEO_CLIP, FRAME_CLIP = ROOT / "demo" / "pendulum-video-clip", ROOT / "demo" / "pendulum-frame-clip"
CW, CCW = "a pendulum spinning clockwise", "a pendulum spinning counterclockwise"


def test_contrastive_trainer_is_deterministic_and_writes_loadable_folders(tmp_path):
    """demo/train_contrastive_models.py, shortened, twice: byte-identical weights; the folders load as X-CLIP (with
    its clips' frame rate for sac_clip.py) and CLIP."""
    short = ["--clips", "12", "--frames", "4", "--steps", "2", "--batch-size", "4", "--eval-every", "0"]
    for out in ("a", "b"):
        run_script("demo/train_contrastive_models.py", "--out-dir", str(tmp_path / out), *short, cwd=ROOT)
    for name in ("pendulum-video-clip", "pendulum-frame-clip"):
        a, b = (tmp_path / out / name / "model.safetensors" for out in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name
    video = sac_clip.CLIPReward.from_pretrained(str(tmp_path / "a" / "pendulum-video-clip"), [CW])
    frame = sac_clip.CLIPReward.from_pretrained(str(tmp_path / "a" / "pendulum-frame-clip"), [CW])
    assert (video.kind, video.context_size, frame.kind) == ("xclip", 4, "clip")
    assert json.loads((tmp_path / "a" / "pendulum-video-clip" / "vlm_rm_config.json").read_text())["video_fps"] == 10.0
