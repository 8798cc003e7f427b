"""sac_clip.py: the CLIP reward against an independent computation with the model's own get_image_features /
get_text_features and image processor, the alpha = 1 projection, batched preprocessing against the processor,
the labeler's batching, an end-to-end run, bad input. Models are the tiny random CLIP of conftest.tiny_clip,
loaded through from_pretrained(folder) as a hub id would be."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, CLIPImageProcessor, CLIPModel

import sac_clip
from conftest import ROOT, run_script, scalars
from test_sac_core import EXPECTED, SOURCE, blocks

GOAL, BASELINE = "a pendulum pointing up", "a pendulum"


def pendulum_frames(angles) -> np.ndarray:
    """Pendulum-v1 rendered (500x500 RGB) at the given angles (0: upright)."""
    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env.reset(seed=0)
    frames = []
    for a in angles:
        env.unwrapped.state = np.array([a, 0.0])
        frames.append(env.render())
    env.close()
    return np.stack(frames)


def noise_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Rendered frames at 6 angles plus 2 noise frames resized to the same size by construction (500x500)."""
    return np.concatenate([pendulum_frames(np.linspace(0, np.pi, 6)), noise_frames(2, 500, 500)])


@pytest.fixture(scope="module")
def reference(tiny_clip):
    """The checkpoint's own model, tokenizer and (PIL) processor, loaded independently of sac_clip."""
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    return model, AutoTokenizer.from_pretrained(tiny_clip), AutoImageProcessor.from_pretrained(tiny_clip)


def features(out) -> torch.Tensor:
    return getattr(out, "pooler_output", out)


def reference_embeddings(reference, frames, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image embeddings of frames (PIL processor, get_image_features) and of prompts (float64)."""
    model, tokenizer, processor = reference
    with torch.no_grad():
        x = features(model.get_image_features(**processor(images=list(frames), return_tensors="pt")))
        t = features(model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt")))
    x, t = x.double().numpy(), t.double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)


def test_alpha_0_is_the_cosine_similarity(tiny_clip, reference, frames):
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL], alpha=0.0)
    r = reward(frames).numpy()
    x, t = reference_embeddings(reference, frames, [GOAL])
    cosine = x @ t[0]
    assert r.dtype == np.float32 and r.shape == (len(frames),)
    np.testing.assert_allclose(r[:6], cosine[:6], atol=1e-5)  # renders: preprocessing is exact
    np.testing.assert_allclose(r, cosine, atol=1e-4)  # noise: a pixel one uint8 level off moves it up to 4e-5
    assert cosine.std() > 1e-3  # the frames are told apart: a constant would not pass


def test_several_goal_prompts_average_normalised_embeddings_without_renormalising(tiny_clip, reference, frames):
    """VLM-RM's g is the mean of unit vectors (|g| < 1): with alpha = 0, reward = x.g + (1 - |g|^2) / 2."""
    prompts = [GOAL, "the pole is upright", "a pendulum balanced at the top"]
    r = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), prompts, alpha=0.0)(frames).numpy()
    x, t = reference_embeddings(reference, frames, prompts)
    g = t.mean(0)
    np.testing.assert_allclose(r, x @ g + (1 - g @ g) / 2, atol=1e-4)
    assert abs(1 - g @ g) > 1e-3  # the constant is not negligible, so this pins the normalisation
    assert not np.allclose(r, x @ (g / np.linalg.norm(g)), atol=1e-4)  # a re-normalised g gives other rewards


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_reward_matches_the_formula(tiny_clip, reference, frames, alpha):
    """reward = 1 - |(x - g) P|^2 / 2 with P = alpha d d^T / |d|^2 + (1 - alpha) I, in float64 numpy."""
    goals, baselines = [GOAL, "an upright pole"], [BASELINE, "a pole"]
    r = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), goals, baselines, alpha=alpha)(frames).numpy()
    x, t = reference_embeddings(reference, frames, goals + baselines)
    g, b = t[:2].mean(0), t[2:].mean(0)
    d = g - b
    P = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(len(d))
    np.testing.assert_allclose(r, 1 - 0.5 * (((x - g) @ P) ** 2).sum(1), atol=1e-4)


def test_alpha_1_depends_only_on_the_projection_onto_goal_minus_baseline(tiny_clip, frames):
    """Two unit embeddings with the same component along d = g - b but different elsewhere get the same reward
    at alpha = 1, and different rewards at alpha < 1 (so the check can fail)."""
    one = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL], [BASELINE], alpha=1.0)
    half = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL], [BASELINE], alpha=0.5)
    with torch.no_grad():
        x1 = one.embed_images(one.preprocess(torch.from_numpy(frames))).double()
    d = (one.goal - one.baseline).double()
    d = d / d.norm()
    along = x1 @ d  # (N,)
    u = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u - (u @ d)[:, None] * d  # orthogonal to d
    u = u / u.norm(dim=1, keepdim=True)
    x2 = along[:, None] * d + (1 - along[:, None] ** 2).sqrt() * u  # unit, same projection, other direction
    assert torch.allclose(x2.norm(dim=1), torch.ones(len(x2), dtype=torch.float64))
    assert (x1 - x2).norm(dim=1).min() > 0.1
    r1, r2 = one.reward_from_embeddings(x1.float()), one.reward_from_embeddings(x2.float())
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=0)
    torch.testing.assert_close(r1, (1 - 0.5 * ((x1 - one.goal.double()) @ d) ** 2).float(), atol=1e-5, rtol=0)
    h1, h2 = half.reward_from_embeddings(x1.float()), half.reward_from_embeddings(x2.float())
    assert (h1 - h2).abs().max() > 1e-2
    # and through frames: rewards at alpha = 1 follow the projection of the frame's own embedding
    torch.testing.assert_close(one(frames), r1.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("uint8_resize", [True, False], ids=["cpu-uint8-kernel", "float-two-pass"])
@pytest.mark.parametrize("vit_l", [False, True], ids=["tiny-36-crop-32", "vit-l-224"])
def test_batched_preprocessing_matches_the_image_processor(tiny_clip, reference, frames, vit_l, uint8_resize):
    """Against the checkpoint's own processor (resize to 36, crop 32) and ViT-L/14's (CLIPImageProcessor's
    defaults are openai/clip-vit-large-patch14's: 224, bicubic, OpenAI mean and std), for both resize paths (the
    CPU's uint8 kernel, and the float path that CUDA runs).
    Tolerance: at most 2 uint8 levels (2/255/std, 0.030 after normalisation) on under 1% of the values, float32
    rounding (1e-5) elsewhere. Measured (values off by more than 1e-5): renders 0.02% (uint8 kernel) and 0.00%
    (float); noise images 0.2% to 0.8% (uint8 kernel) and 0.00% to 0.12% (float); never more than 2 levels. The
    differences come from PIL's fixed-point filter weights."""
    model, tokenizer, processor = reference
    if vit_l:
        processor = CLIPImageProcessor()
    reward = sac_clip.CLIPReward(model, tokenizer, processor, [GOAL])
    reward.uint8_resize = uint8_resize
    level = 1 / 255 / np.min(processor.image_std)
    for batch in [frames, noise_frames(3, 256, 256, seed=1), noise_frames(2, 120, 200, seed=2),
                  noise_frames(2, 20, 24, seed=3)]:  # renders, MuJoCo's 256x256, non-square, upsampling
        expected = processor(images=list(batch), return_tensors="pt")["pixel_values"].numpy()
        got = reward.preprocess(torch.from_numpy(batch)).numpy()
        assert got.shape == expected.shape and got.dtype == np.float32
        diff = np.abs(got - expected)
        assert diff.max() <= 2 * level + 1e-5, diff.max() / level
        assert (diff > 1e-5).mean() < 0.01, (diff > 1e-5).mean()


def test_labeler_takes_the_oldest_transitions_in_batches_and_rewards_their_own_frames(tiny_clip):
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL])
    labeler = sac_clip.CLIPLabeler(reward, batch_size=4)
    queue = sac_clip.TransitionQueue(2)
    images = noise_frames(9, 40, 40, seed=4)
    pushed = [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4), (1, 5), (0, 6), (0, 7), (0, 8)]  # (env, frame index)
    for step, (env, k) in enumerate(pushed):
        queue.push({"obs": np.zeros(3, np.float32), "next_obs": np.zeros(3, np.float32), "action": np.zeros(1),
                    "env_reward": -1.0, "terminated": False, "done": False, "env": env, "episode": env,
                    "episode_step": step, "frame": images[k]})
    batch = labeler.label(queue)
    assert len(batch["reward"]) == 8 and len(queue) == 1  # two full batches; the newest waits
    assert sorted(batch["episode_step"]) == list(range(8)) and "frame" not in batch
    single = np.array([reward(images[k: k + 1]).item() for _, k in pushed])
    np.testing.assert_allclose(batch["reward"], single[batch["episode_step"]], atol=1e-5)
    assert labeler.label(queue) is None
    flushed = labeler.label(queue, flush=True)
    assert list(flushed["episode_step"]) == [8] and len(queue) == 0


def test_pendulum_end_to_end_writes_events_args_checkpoint(in_tmp, tiny_clip):
    run_script("sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", str(tiny_clip), "--prompt", GOAL,
               "--prompt", "an upright pole", "--baseline-prompt", BASELINE, "--clip-alpha", "0.5",
               "--total-timesteps", "400", "--num-envs", "2", "--reward-batch-size", "48", "--learning-starts", "200",
               "--batch-size", "64", "--eval-every", "400", "--eval-episodes", "1", "--log-every", "100",
               "--no-progress", "--threads", "1", "--run-name", "c", cwd=in_tmp)
    run = in_tmp / "runs" / "c"
    args = json.loads((run / "args.json").read_text())
    assert args["prompt"] == [GOAL, "an upright pole"] and args["baseline_prompt"] == [BASELINE]
    assert args["clip_alpha"] == 0.5 and args["clip_model_id"] == str(tiny_clip)
    tags = scalars(run)
    for tag in ["charts/clip_return", "charts/episodic_return", "charts/eval_return", "clip/frames_per_s",
                "clip/reward", "losses/qf_loss"]:
        assert tag in tags, tag
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["global_step"] == 400 and ckpt["replay_buffer"]["size"] == 400  # the final flush labels all
    rewards = ckpt["replay_buffer"]["data"]["reward"][:, 0].double().numpy()
    clip_returns = [v for _, v in tags["charts/clip_return"]]
    assert len(clip_returns) == 2  # one 200-step episode per env
    assert sum(clip_returns) == pytest.approx(rewards.sum(), abs=1e-3)  # the buffer holds the CLIP rewards
    assert sum(v for _, v in tags["charts/episodic_return"]) < -100  # Pendulum's own reward: not what was learned
    assert np.all(np.abs(rewards) <= 1.5)


def test_core_blocks_are_identical_to_sac_env_reward():
    copy, source = blocks(ROOT / "sac_clip.py"), blocks(SOURCE)
    assert list(copy) == EXPECTED
    for name in EXPECTED:
        assert copy[name] == source[name], f"run: python tests/test_sac_core.py --sync ({name})"


@pytest.mark.parametrize("flags, message", [
    (["--clip-alpha", "1.5"], "--clip-alpha must be in [0, 1]"),
    (["--clip-alpha", "-0.1"], "--clip-alpha must be in [0, 1]"),
    ([], "no goal prompt"),
    (["--prompt", " "], "empty prompt"),
    (["--baseline-prompt", ""], "empty prompt"),
    (["--reward-batch-size", "0"], "--reward-batch-size must be at least 1"),
    (["--clip-model-id", "/no/such/folder"], "no such folder"),
    (["--clip-model-id", "nobody/no-such-clip"], "hf download nobody/no-such-clip"),
    (["--baseline-prompt", GOAL, "--clip-alpha", "0.5"], "same CLIP embedding"),
])
def test_bad_input_is_one_line_and_exit_2(in_tmp, tiny_clip, monkeypatch, capsys, flags, message):
    """In-process through main(), as the command line runs it (one subprocess case below)."""
    argv = ["sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", str(tiny_clip), "--no-progress"]
    if "--prompt" not in flags and message != "no goal prompt":
        argv += ["--prompt", GOAL]
    monkeypatch.setattr("sys.argv", argv + flags)
    with pytest.raises(SystemExit) as exit_:
        sac_clip.main(sac_clip.Args, sac_clip.build_reward)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]  # (after transformers' "Loading weights" bar when the model loaded)
    assert last.startswith("error: ") and message in last, err


def test_missing_model_from_the_command_line(in_tmp):
    proc = run_script("sac_clip.py", "--env-id", "Pendulum-v1", "--prompt", GOAL, "--clip-model-id",
                      str(in_tmp / "nothing"), cwd=in_tmp, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
