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
from transformers import AutoImageProcessor, AutoTokenizer, CLIPImageProcessorPil, CLIPModel

import sac_clip
from conftest import ROOT, RecordingLogger, run_script, scalars

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
        processor = CLIPImageProcessorPil()  # the PIL reference, with ViT-L/14's settings
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
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 400 and ckpt["replay_buffer"]["size"] == 400  # the final flush labels all
    rewards = ckpt["replay_buffer"]["data"]["reward"][:, 0].double().numpy()
    clip_returns = [v for _, v in tags["charts/clip_return"]]
    assert len(clip_returns) == 2  # one 200-step episode per env
    assert sum(clip_returns) == pytest.approx(rewards.sum(), abs=1e-3)  # the buffer holds the CLIP rewards
    assert sum(v for _, v in tags["charts/episodic_return"]) < -100  # Pendulum's own reward: not what was learned
    assert np.all(np.abs(rewards) <= 1.5)


@pytest.mark.parametrize("flags, message", [
    (["--clip-alpha", "1.5"], "--clip-alpha must be in [0, 1]"),
    (["--clip-alpha", "-0.1"], "--clip-alpha must be in [0, 1]"),
    ([], "--prompt is required"),
    (["--prompt", " "], "--prompt is required"),
    (["--baseline-prompt", ""], "empty prompt"),
    (["--reward-batch-size", "0"], "--reward-batch-size must be at least 1"),
    (["--clip-model-id", "/no/such/folder"], "no such folder"),
    (["--clip-model-id", "nobody/no-such-clip"], "hf download nobody/no-such-clip"),
    (["--baseline-prompt", GOAL, "--clip-alpha", "0.5"], "same CLIP embedding"),
])
def test_bad_input_is_one_line_and_exit_2(in_tmp, tiny_clip, monkeypatch, capsys, flags, message):
    """In-process through main(), as the command line runs it (one subprocess case below)."""
    argv = ["sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", str(tiny_clip), "--no-progress"]
    if "--prompt" not in flags and flags:
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


# ----- compositional and sequential prompts -----
OTHER = "a pendulum hanging down"


def items_for(images, first_step=1, env=0):
    """Queue items of one episode, episode_step first_step, first_step + 1, ..., one per image."""
    return [{"obs": np.zeros(3, np.float32), "next_obs": np.zeros(3, np.float32), "action": np.zeros(1),
             "env_reward": -1.0, "terminated": False, "done": False, "env": env, "episode": 0,
             "episode_step": first_step + i, "frame": f} for i, f in enumerate(images)]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_one_prompt_of_weight_1_is_bit_for_bit_the_single_prompt_reward(tiny_clip, frames, alpha):
    """Against the formula as it was before weights: g = the mean of the normalised embeddings, P from d = g - b."""
    single = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL], [BASELINE], alpha=alpha)
    weighted = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), GOAL, [BASELINE], alpha=alpha, weights=[1.0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip)
    goal = single.embed_text(tokenizer, [GOAL]).mean(0)
    d = goal - single.embed_text(tokenizer, [BASELINE]).mean(0)
    eye = torch.eye(len(d))
    P = alpha * (torch.outer(d, d) / d.dot(d) if alpha > 0 else torch.zeros_like(eye)) + (1.0 - alpha) * eye
    with torch.inference_mode():
        before = 1.0 - 0.5 * ((single.embed_frames(frames) - goal) @ P).pow(2).sum(-1)
    assert torch.equal(single(frames), before) and torch.equal(weighted(frames), before)
    # several prompts without weights: exactly the mean, as before
    several = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL, OTHER], alpha=0.0)
    assert torch.equal(several.goal, several.embed_text(tokenizer, [GOAL, OTHER]).mean(0))


def test_weighted_goal_is_the_weighted_sum_over_the_sum_of_absolute_weights(tiny_clip, reference, frames):
    prompts, weights = [GOAL, OTHER, "an upright pole"], [2.0, -1.0, 0.5]
    reward = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), prompts, weights=weights)
    x, e = reference_embeddings(reference, frames, prompts)
    g = (np.array(weights)[:, None] * e).sum(0) / np.abs(weights).sum()
    np.testing.assert_allclose(reward.goal.numpy(), g, atol=1e-6)
    np.testing.assert_allclose(reward(frames).numpy(), x @ g + (1 - g @ g) / 2, atol=1e-4)  # alpha 0
    # the scale of the weights does not matter, their ratios and signs do
    scaled = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), prompts, weights=[4.0, -2.0, 1.0])
    torch.testing.assert_close(scaled.goal, reward.goal)
    with torch.inference_mode():
        cos = reward.cosines(reward.embed_frames(frames)).numpy()
    np.testing.assert_allclose(cos, x @ e.T, atol=1e-4)  # the plain per-prompt cosines of the logs


@pytest.mark.parametrize("weights, message", [([0.0, 0.0], "all 0"), ([1.0], "1 --prompt-weight for 2 --prompt"),
                                              ([1.0, float("nan")], "finite")])
def test_bad_weights_are_refused(tiny_clip, weights, message):
    with pytest.raises(sac_clip.UserError, match=message):
        sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [GOAL, OTHER], weights=weights)


def test_schedule_switches_goal_at_the_right_step_and_logs_each_entry(tiny_clip):
    """"0:GOAL;3:OTHER" at alpha 0.5: transitions with episode_step 1-3 (steps s = 0..2) are rewarded as a
    single-prompt CLIPReward of GOAL rewards them, 4-6 as one of OTHER (each with its own projection)."""
    args = sac_clip.Args(prompt_schedule=f"0:{GOAL};3:{OTHER}", baseline_prompt=(BASELINE,), clip_alpha=0.5,
                         clip_model_id=str(tiny_clip), reward_batch_size=4)
    labeler = sac_clip.build_reward(args, torch.device("cpu"))
    assert labeler.starts == [0, 3] and labeler.model.goals.shape[0] == 2
    images = noise_frames(6, 40, 40, seed=8)
    queue = sac_clip.TransitionQueue(1)
    for it in items_for(images):
        queue.push(it)
    out = [labeler.label(queue), labeler.label(queue, flush=True)]  # a batch of 4 with both goals, then 2
    rewards = np.concatenate([b["reward"] for b in out])
    assert list(np.concatenate([b["episode_step"] for b in out])) == [1, 2, 3, 4, 5, 6]
    single = {p: sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [p], [BASELINE], alpha=0.5)(images).numpy()
              for p in (GOAL, OTHER)}
    np.testing.assert_allclose(rewards[:3], single[GOAL][:3], atol=1e-6)
    np.testing.assert_allclose(rewards[3:], single[OTHER][3:], atol=1e-6)
    assert np.abs(single[GOAL] - single[OTHER]).min() > 1e-4  # the goals tell the frames apart
    logger = RecordingLogger()
    labeler.log(logger, 6)
    assert logger.scalars["clip/reward_schedule0"] == pytest.approx(rewards[:3].mean(), abs=1e-6)
    assert logger.scalars["clip/reward_schedule1"] == pytest.approx(rewards[3:].mean(), abs=1e-6)
    assert f"|schedule1|3|{OTHER}|" in logger.texts["prompts"]


def test_composition_logs_each_prompts_cosine(tiny_clip):
    args = sac_clip.Args(prompt=(GOAL, OTHER), prompt_weight=(1.0, -0.5), clip_model_id=str(tiny_clip),
                         reward_batch_size=4)
    labeler = sac_clip.build_reward(args, torch.device("cpu"))
    images = noise_frames(4, 40, 40, seed=9)
    queue = sac_clip.TransitionQueue(1)
    for it in items_for(images):
        queue.push(it)
    rewards = labeler.label(queue)["reward"]
    np.testing.assert_allclose(rewards, labeler.model(images).numpy(), atol=1e-6)
    logger = RecordingLogger()
    labeler.log(logger, 4)
    for i, p in enumerate((GOAL, OTHER)):  # alpha 0, one prompt: the reward is the plain cosine
        alone = sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [p])(images).numpy()
        assert logger.scalars[f"clip/cosine_prompt{i}"] == pytest.approx(alone.mean(), abs=1e-5)
    assert "|prompt1|-0.5|" in logger.texts["prompts"]


@pytest.mark.parametrize("flags, message", [
    (["--prompt-schedule", "0:a;200:b;100:c"], "starts must increase strictly (100 after 200)"),
    (["--prompt-schedule", "5:a;200:b"], "the first entry must start at 0"),
    (["--prompt-schedule", "0:a;100:"], "has no text"),
    (["--prompt-schedule", "0:a;b"], "has no ':'"),
    (["--prompt-schedule", "0:a", "--prompt", GOAL], "exclude each other"),
    (["--prompt", GOAL, "--prompt", OTHER, "--prompt-weight", "0", "--prompt-weight", "0"], "all 0"),
])
def test_bad_prompt_flags_are_one_line_and_exit_2(in_tmp, tiny_clip, monkeypatch, capsys, flags, message):
    """In-process through main(), as the command line runs it."""
    argv = ["sac_clip.py", "--env-id", "Pendulum-v1", "--clip-model-id", str(tiny_clip), "--no-progress"]
    monkeypatch.setattr("sys.argv", argv + flags)
    with pytest.raises(SystemExit) as exit_:
        sac_clip.main(sac_clip.Args, sac_clip.build_reward)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and message in last, err


def test_unsorted_schedule_from_the_command_line(in_tmp):
    proc = run_script("sac_clip.py", "--env-id", "Pendulum-v1", "--prompt-schedule", "0:a;200:b;100:c", cwd=in_tmp,
                      check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --prompt-schedule entry 3 '100:c': starts must increase strictly")


def test_end_to_end_with_a_schedule(in_tmp, tiny_clip):
    """In-process through train(): the per-entry rewards reach TensorBoard, the schedule is saved in args.json."""
    schedule = f"0:{GOAL};100:{OTHER}"
    args = sac_clip.Args(prompt_schedule=schedule, clip_model_id=str(tiny_clip), reward_batch_size=25,
                         run_name="schedule", env_id="Pendulum-v1", total_timesteps=300, learning_starts=100,
                         batch_size=32, eval_every=0, eval_episodes=0, log_every=100, checkpoint_every=0, threads=1,
                         progress=False)
    args, run_dir = sac_clip.prepare_run(args, sac_clip.Args)
    summary = sac_clip.train(args, run_dir, sac_clip.build_reward)
    assert summary["buffer_size"] == 300
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["prompt_schedule"] == schedule and saved["prompt"] == []
    logged = scalars(run_dir)
    for tag in ("clip/reward_schedule0", "clip/reward_schedule1", "clip/reward", "charts/clip_return"):
        assert tag in logged, f"{tag} not logged: {sorted(logged)}"
    assert logged["clip/reward_schedule0"][0][0] == 100 and logged["clip/reward_schedule1"][0][0] > 100
