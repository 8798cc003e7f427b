"""sac_sds.py's model families (docs/method.md#model-families): tiny SDXL, SD3, ZeroScope and Wan pipelines and
cross-frame attention, built from configs, saved, and loaded through --model-id. Each reward is checked against a
hand computation of the conventions from the pipeline's own parts (loaded here with diffusers directly), a
text-blind denoiser gives zero, batches equal single frames, unsupported models are refused in one line, and one
image and one video family run end to end.

    python -m pytest -q tests/test_families.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script

import sac_sds
from sac_sds import SDSReward, UserError

PROMPT = "a pendulum pointing up"
RES = 16  # every tiny model: 16 px frames, 8x8 latents (Wan: 2x2, 16 channels)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: identical rounding for every batch row


def frames(n: int, seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def pixels(x: np.ndarray) -> torch.Tensor:
    """Frames as every pipeline takes them: [-1, 1], resized (antialiased bilinear) to RES."""
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(x, size=(RES, RES), mode="bilinear", antialias=True)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def tadpole(eps_u, eps_c, noise, dims, align_scale=2000.0, recon_scale=200.0):
    align = (eps_c - eps_u).pow(2).mean(dims)
    recon = (eps_u - noise).pow(2).mean(dims) - (eps_c - noise).pow(2).mean(dims)
    return symlog(align_scale * align) + symlog(recon_scale * recon)


# ----- the conventions, by hand, from each pipeline's own parts -----
@torch.no_grad()
def test_sdxl_reward_equals_hand_computation(tiny_families):
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    model = SDSReward.from_pretrained(str(tiny_families["sdxl"]), PROMPT, resolution=RES)
    x, g = frames(3, seed=1), torch.Generator().manual_seed(1)
    noise, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([410, 450, 490])
    reward = model(model.encode(x), t, noise)

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_families["sdxl"])
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(PROMPT, device="cpu")
    assert uncond.abs().sum() == 0 and pooled_uncond.abs().sum() == 0  # force_zeros_for_empty_prompt
    time_ids = pipe._get_add_time_ids((RES, RES), (0, 0), (RES, RES), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert time_ids.tolist() == [[RES, RES, 0, 0, RES, RES]]
    z = pipe.vae.encode(pixels(x)).latent_dist.mean * 0.13025
    z_t = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(z, noise, t)

    def unet(text, pool):
        extra = {"text_embeds": pool.expand(3, -1), "time_ids": time_ids.expand(3, -1)}
        return pipe.unet(z_t, t, encoder_hidden_states=text.expand(3, -1, -1), added_cond_kwargs=extra).sample

    expected = tadpole(unet(uncond, pooled_uncond), unet(cond, pooled), noise, (1, 2, 3))
    assert torch.allclose(reward, expected, atol=1e-4), (reward, expected)


@torch.no_grad()
def test_sd3_reward_equals_hand_computation(tiny_families):
    """Rectified flow: sigma = t / 1000, x_t = (1 - sigma) z + sigma eps, the transformer at timestep t, and the
    velocity turned into eps = x_t + (1 - sigma) v; latents (mean - shift_factor) * scaling_factor; the negative
    is the encoded "" (and T5's place zeros, max_sequence_length 256)."""
    from diffusers import StableDiffusion3Pipeline

    model = SDSReward.from_pretrained(str(tiny_families["sd3"]), PROMPT, resolution=RES)
    assert model.family.flow and not model.video
    x, g = frames(3, seed=2), torch.Generator().manual_seed(2)
    noise, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([100, 450, 900])
    reward = model(model.encode(x), t, noise)

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_families["sd3"], text_encoder_3=None, tokenizer_3=None)
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(PROMPT, None, None, device="cpu")
    empty, _, empty_pooled, _ = pipe.encode_prompt("", None, None, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(uncond, empty) and torch.equal(pooled_uncond, empty_pooled) and cond.shape[1] == 77 + 256
    z = (pipe.vae.encode(pixels(x)).latent_dist.mean - 0.1) * 1.5
    sigma = (t / 1000).view(3, 1, 1, 1)
    x_t = (1 - sigma) * z + sigma * noise

    def eps(text, pool):
        v = pipe.transformer(x_t, timestep=t.float(), encoder_hidden_states=text.expand(3, -1, -1),
                             pooled_projections=pool.expand(3, -1)).sample
        return x_t + (1 - sigma) * v

    expected = tadpole(eps(uncond, pooled_uncond), eps(cond, pooled), noise, (1, 2, 3))
    assert torch.allclose(reward, expected, atol=1e-4), (reward, expected)


@torch.no_grad()
def test_zeroscope_reward_equals_hand_computation(tiny_families):
    """One window: latents (1, C, F, h, w) of the per-frame VAE, one text embedding for the video."""
    from diffusers import DDPMScheduler, TextToVideoSDPipeline

    model = SDSReward.from_pretrained(str(tiny_families["zeroscope"]), PROMPT, resolution=RES, context_size=6)
    assert model.video and sac_sds.windows(6, model.context_size, model.stride) == [(0, 6)]
    x, g = frames(6, seed=3), torch.Generator().manual_seed(3)
    noise = torch.randn(6, 4, 8, 8, generator=g)
    reward = model(model.encode(x), 450, noise)

    pipe = TextToVideoSDPipeline.from_pretrained(tiny_families["zeroscope"])
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    z = (pipe.vae.encode(pixels(x)).latent_dist.mean * 0.18215).permute(1, 0, 2, 3)[None]  # (1, C, F, h, w)
    n = noise.permute(1, 0, 2, 3)[None]
    z_t = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(z, n, torch.tensor([450]))
    eps_u = pipe.unet(z_t, 450, encoder_hidden_states=uncond).sample
    eps_c = pipe.unet(z_t, 450, encoder_hidden_states=cond).sample
    expected = tadpole(eps_u, eps_c, n, (1, 3, 4))[0]  # per frame
    assert torch.allclose(reward, expected, atol=1e-4), (reward, expected)


@torch.no_grad()
@pytest.mark.parametrize("n", [9, 7])
def test_wan_reward_equals_hand_computation(tiny_families, n):
    """The causal video VAE encodes a window of 4k + 1 frames (7 frames: padded with its last frame to 9) into
    k + 1 latent frames, normalised by latents_mean / latents_std; latent frame j's terms go to the rendered frames it
    encodes (0; 1-4; 5-8), and its noise is its first frame's; flow matching as SD3; UMT5 at 512 tokens."""
    from diffusers import WanPipeline

    model = SDSReward.from_pretrained(str(tiny_families["wan"]), PROMPT, resolution=RES, context_size=9)
    assert model.video and model.family.flow and model.latent_shape == (16, 2, 2)
    x, g = frames(n, seed=4), torch.Generator().manual_seed(4)
    noise = torch.randn(n, 16, 2, 2, generator=g)
    reward = model(model.encode(x), 600, noise)

    pipe = WanPipeline.from_pretrained(tiny_families["wan"])
    cond, uncond = pipe.encode_prompt(PROMPT, device="cpu", max_sequence_length=512)
    assert cond.shape[1] == 512
    video = pixels(x).permute(1, 0, 2, 3)[None]  # (1, 3, F, H, W)
    video = torch.cat([video, video[:, :, -1:].expand(-1, -1, 9 - n, -1, -1)], 2)
    z = pipe.vae.encode(video).latent_dist.mean  # (1, 16, 3, 2, 2)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1)
    z = (z - mean) / std
    first = [0, 1, 5]  # the first rendered frame of each latent frame
    eps_drawn = noise[first].permute(1, 0, 2, 3)[None]
    x_t = 0.4 * z + 0.6 * eps_drawn
    eps = [x_t + 0.4 * pipe.transformer(x_t, timestep=torch.tensor([600.0]), encoder_hidden_states=e).sample
           for e in (uncond, cond)]
    per_latent = tadpole(*eps, eps_drawn, (1, 3, 4))[0]
    expected = per_latent[[0, 1, 1, 1, 1, 2, 2, 2, 2][:n]]
    assert torch.allclose(reward, expected, atol=1e-4), (reward, expected)


@torch.no_grad()
def test_cross_frame_attention_reads_the_first_frame(tiny_families):
    """Text2Video-Zero: in every self-attention, each frame's keys and values are its window's first frame's. So
    frame 0 is scored as the image model scores it, a window of identical frames is scored as those frames alone,
    and the other frames of a varied window differ from their image scores."""
    folder = str(tiny_families["sd"])
    video = SDSReward.from_pretrained(folder, PROMPT, cross_frame_attention=True, context_size=4, stride=4)
    image = SDSReward.from_pretrained(folder, PROMPT)
    assert video.video and not image.video
    g = torch.Generator().manual_seed(5)
    x = frames(4, seed=5)
    latents, noise = image.encode(x), torch.randn(4, 4, 8, 8, generator=g)
    per_frame = image(latents, 450, noise)
    windowed = video(latents, 450, noise)
    assert torch.allclose(windowed[0], per_frame[0], atol=1e-5)
    assert not torch.allclose(windowed[1:], per_frame[1:], atol=1e-3)
    same, same_noise = latents[:1].expand(4, -1, -1, -1), noise[:1].expand(4, -1, -1, -1)  # 4 identical z_t
    assert torch.allclose(video(same, 450, same_noise), image(same, 450, same_noise), atol=1e-5)
    # several windows in one pass: the processor's batch follows the number of videos
    a, r = video.terms(torch.stack([latents, same]), torch.tensor([450, 450]), torch.stack([noise, same_noise]))
    a1, r1 = video.terms(latents[None], torch.tensor([450]), noise[None])
    assert torch.allclose(a[0], a1[0], atol=1e-6) and torch.allclose(r[0], r1[0], atol=1e-6)


# ----- invariances, every family -----
def text_blind(model: SDSReward) -> None:
    """Cuts every path from the text to the denoiser's output: cross-attention outputs (UNets), the text and
    pooled embedders (SD3, Wan), SDXL's pooled text in its added embedding."""
    net = model.unet
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
        if hasattr(net, "context_embedder"):  # SD3
            net.context_embedder.weight.zero_()
            net.context_embedder.bias.zero_()
            net.time_text_embed.text_embedder.linear_1.weight.zero_()
        if hasattr(net, "condition_embedder"):  # Wan
            net.condition_embedder.text_embedder.linear_1.weight.zero_()
        if getattr(net, "add_embedding", None) is not None:  # SDXL: [pooled text, time ids] -> added embedding
            net.add_embedding.linear_1.weight[:, :32] = 0


FAMILIES = ["sd", "sdxl", "sd3", "zeroscope", "wan"]


def load(tiny_families, family, **options):
    return SDSReward.from_pretrained(str(tiny_families[family]), PROMPT, resolution=RES, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_blind_denoiser_gives_zero(tiny_families, family):
    model = load(tiny_families, family, context_size=5)
    text_blind(model)
    g = torch.Generator().manual_seed(6)
    n = 5
    latents = model.encode(frames(n, seed=6))
    reward = model(latents, 500, torch.randn(n, *model.latent_shape, generator=g))
    if family == "wan":  # its transformer rounds the two rows of one batch differently, by ~5e-7 (measured)
        assert reward.abs().max() < 1e-4, reward
    else:
        assert torch.count_nonzero(reward) == 0, reward


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_single(tiny_families, family):
    """Image families: N frames in one pass equal each frame alone. Video families: W windows in one pass equal
    each window alone."""
    model = load(tiny_families, family, context_size=5)
    g = torch.Generator().manual_seed(7)
    if not model.video:
        latents, t = model.encode(frames(4, seed=7)), torch.tensor([300, 400, 500, 600])
        noise = torch.randn(4, *model.latent_shape, generator=g)
        batched = model(latents, t, noise)
        singles = torch.cat([model(latents[i:i + 1], t[i:i + 1], noise[i:i + 1]) for i in range(4)])
    else:
        latents = torch.stack([model.encode(frames(5, seed=s)) for s in (7, 8, 9)])
        noise, t = torch.randn(3, 5, *model.latent_shape, generator=g), torch.tensor([300, 450, 600])
        batched = torch.stack(model.terms(latents, t, noise))
        singles = torch.cat([torch.stack(model.terms(latents[i:i + 1], t[i:i + 1], noise[i:i + 1]))
                             for i in range(3)], 1)
    assert torch.allclose(batched, singles, rtol=1e-4, atol=1e-5)
    assert batched.std() > 0


@pytest.mark.parametrize("family", ["sdxl", "sd3", "wan"])
def test_composition_and_schedule_work_for_every_family(tiny_families, family):
    """Two prompts in one pass: weights (1, 0) give the first prompt's reward, all weights 0 give exactly zero, and a
    schedule's entry k scores on prompt k alone, as a model of that one prompt does."""
    other = "a pendulum pointing down"
    folder = str(tiny_families[family])
    one, two = (SDSReward.from_pretrained(folder, p, resolution=RES, context_size=5) for p in (PROMPT, other))
    both = SDSReward.from_pretrained(folder, [PROMPT, other], resolution=RES, context_size=5, weights=[1.0, 0.0])
    g = torch.Generator().manual_seed(12)
    latents = one.encode(frames(5, seed=12))
    noise = torch.randn(5, *one.latent_shape, generator=g)
    torch.testing.assert_close(both(latents, 450, noise), one(latents, 450, noise), rtol=1e-4, atol=1e-5)
    for k, single in enumerate((one, two)):
        torch.testing.assert_close(both(latents, 450, noise, prompt=k), single(latents, 450, noise), rtol=1e-4,
                                   atol=1e-5)
    zero = SDSReward.from_pretrained(folder, [PROMPT, other], resolution=RES, context_size=5, weights=[0.0, 0.0])
    assert torch.count_nonzero(zero(latents, 450, noise)) == 0


# ----- refusals -----
def write_index(folder, class_name):
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1"}))
    return str(folder)


def test_guidance_distilled_and_unsupported_pipelines_are_refused_in_one_line(tmp_path, in_tmp):
    flux = write_index(tmp_path / "flux", "FluxPipeline")
    with pytest.raises(UserError, match="guidance-distilled"):
        SDSReward.from_pretrained(flux, PROMPT)
    proc = run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--prompt", PROMPT, "--model-id", flux, "--run-name",
                      "flux", cwd=in_tmp, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "FluxPipeline" in lines[0] and "unconditional" in lines[0]
    assert "Traceback" not in proc.stderr
    other = write_index(tmp_path / "kandinsky", "KandinskyV22Pipeline")
    with pytest.raises(UserError, match=r"KandinskyV22Pipeline, which sac_sds.py does not score with; it loads "
                                        r"StableDiffusionPipeline.*WanPipeline"):
        SDSReward.from_pretrained(other, PROMPT)


def test_video_flags_need_an_sd_model(tiny_families, tiny_motion_adapter):
    with pytest.raises(UserError, match="make a video model of an SD 1.x/2.x model; .* is a StableDiffusion3Pipeline"):
        SDSReward.from_pretrained(str(tiny_families["sd3"]), PROMPT, cross_frame_attention=True)
    with pytest.raises(UserError, match="choose one"):
        SDSReward.from_pretrained(str(tiny_families["sd"]), PROMPT, cross_frame_attention=True,
                                  motion_adapter_id=str(tiny_motion_adapter))


# ----- end to end -----
SHORT_RUN = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--batch-size", "32",
             "--eval-every", "0", "--eval-episodes", "1", "--log-every", "100", "--checkpoint-every", "0",
             "--threads", "1", "--no-progress", "--resolution", str(RES)]


@pytest.mark.parametrize("family,flags", [("sd3", []), ("wan", ["--context-size", "9", "--stride", "4"])])
def test_end_to_end(tiny_families, in_tmp, family, flags):
    run_script("sac_sds.py", *SHORT_RUN, *flags, "--model-id", str(tiny_families[family]), "--prompt", PROMPT,
               "--reward-batch-size", "16", "--run-name", family, cwd=in_tmp)
    state = torch.load(in_tmp / "runs" / family / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 300 and state["replay_buffer"]["size"] == 300  # every transition got its reward
    rewards = state["replay_buffer"]["data"]["reward"]
    assert torch.isfinite(rewards).all() and rewards.std() > 0


# ----- defaults -----
def test_flow_families_default_to_the_papers_noise_at_equal_snr(tiny_families, tmp_path):
    """SD3 and Wan default to t in [540, 620): SD's DDPM a_t at t = 400 and 500 has the signal-to-noise ratio
    a / (1 - a) of sigma = 0.54 and 0.62 under x_t = (1 - sigma) z + sigma eps. A tadpole_config.json overrides."""
    from diffusers import DDPMScheduler

    a = DDPMScheduler.from_pretrained(tiny_families["sd"], subfolder="scheduler").alphas_cumprod
    for t, sigma in ((400, 0.54), (500, 0.62)):  # equal SNR: (1 - s)^2 / s^2 = a / (1 - a)
        assert math.sqrt(1 - a[t]) / (math.sqrt(a[t]) + math.sqrt(1 - a[t])) == pytest.approx(sigma, abs=0.005)
    for family in ("sd3", "wan"):
        settings, source = sac_sds.tadpole_defaults(str(tiny_families[family]))
        assert (settings["noise_level_base"], settings["noise_level_range"]) == (540, 80) and "defaults" in source
        assert (settings["align_scale"], settings["recon_scale"]) == (2000.0, 200.0)
    for family in ("sd", "sdxl", "zeroscope"):
        assert sac_sds.tadpole_defaults(str(tiny_families[family])) == (sac_sds.TADPOLE_DEFAULTS, None)
    import shutil

    own = tmp_path / "sd3-own"
    shutil.copytree(tiny_families["sd3"], own)
    (own / "tadpole_config.json").write_text(json.dumps({"noise_level_base": 700}))
    settings, source = sac_sds.tadpole_defaults(str(own))
    assert settings["noise_level_base"] == 700 and settings["noise_level_range"] == 80 and source.endswith(".json")


def test_frames_render_at_the_reward_models_size(tiny_families):
    """--render-size unset: the training envs render at the reward model's resolution (a flag still wins)."""
    args = sac_sds.Args(prompt=(PROMPT,), model_id=str(tiny_families["sd3"]), env_id="Hopper-v4", resolution=32)
    labeler = sac_sds.build_reward(args, torch.device("cpu"))
    assert labeler.render_size == 32 and args.render_size is None
    args.render_size = labeler.render_size  # as train() does
    env = sac_sds.make_env(args, render=True)
    env.reset(seed=0)
    assert env.render().shape == (32, 32, 3)
    env.close()
    args.render_size = None
    env = sac_sds.make_env(args, render=True)  # nothing sets it: 256
    env.reset(seed=0)
    assert env.render().shape == (sac_sds.DEFAULT_RENDER_SIZE,) * 2 + (3,)
    env.close()


def test_eval_videos_scores_a_video_model_in_windows(tiny_families, tmp_path):
    """eval_videos.py --sds-model-id with a video model: each frame's score is the mean over its windows (the
    model's forward over the episode), from the scorer's draws (t for the episode, then noise per batch)."""
    import eval_videos

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text(json.dumps({"env_id": "Pendulum-v1", "exp_name": "sac_sds",
                                                            "prompt": [PROMPT]}))
    run = eval_videos.read_run(str(tmp_path / "run"), None)
    x = frames(20, seed=11)
    scorer = eval_videos.SdsScorer(eval_videos.EvalArgs(sds_model_id=str(tiny_families["zeroscope"]), batch_size=8,
                                                        seed=3), torch.device("cpu"))
    got = scorer(x, run)
    g = torch.Generator().manual_seed(3)  # the labeler's draws: t for the episode, then each video's noise
    t = int(torch.randint(400, 500, (1,), generator=g))
    noise = torch.empty(20, 4, 8, 8)
    noise[0::2], noise[1::2] = torch.randn(10, 4, 8, 8, generator=g), torch.randn(10, 4, 8, 8, generator=g)
    model = SDSReward.from_pretrained(str(tiny_families["zeroscope"]), PROMPT)  # its own 16 px, 16-frame windows
    model.frame_stride = 2  # the run's env, Pendulum-v1 (dt 0.05 s), at the default 8 frames/s: as sac_sds.py trains
    expected = model(model.encode(x), t, noise).numpy()  # (frame stride 2: even and odd frames, a video each)
    np.testing.assert_allclose(got["sds_score"], expected, rtol=1e-4, atol=1e-4)
    assert got["sds_align"].shape == (20,)
    # --sds-frame-stride 1: windows of consecutive frames
    scorer = eval_videos.SdsScorer(eval_videos.EvalArgs(sds_model_id=str(tiny_families["zeroscope"]), batch_size=8,
                                                        seed=3, sds_frame_stride=1), torch.device("cpu"))
    model.frame_stride = 1
    assert sac_sds.windows(20, model.context_size, model.stride) == [(0, 16), (4, 20)]
    g.manual_seed(3)
    t = int(torch.randint(400, 500, (1,), generator=g))
    noise = torch.randn(20, 4, 8, 8, generator=g)
    np.testing.assert_allclose(scorer(x, run)["sds_score"], model(model.encode(x), t, noise).numpy(), rtol=1e-4,
                               atol=1e-4)


def test_fp16_upcasts_a_vae_that_asks_for_it(tiny_families):
    """--dtype fp16: a VAE whose config sets force_upcast (SDXL's overflows in fp16) runs in fp32, as its pipeline
    runs it; the denoiser stays fp16 and the latents match the fp32 model's."""
    half = SDSReward.from_pretrained(str(tiny_families["sdxl"]), PROMPT, resolution=RES, dtype="fp16")
    full = SDSReward.from_pretrained(str(tiny_families["sdxl"]), PROMPT, resolution=RES)
    assert half.vae.config.force_upcast and half.vae.dtype == torch.float32 and half.unet.dtype == torch.float16
    x = frames(2, seed=13)
    torch.testing.assert_close(half.encode(x), full.encode(x), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(half(half.encode(x), 450, torch.randn(2, *half.latent_shape))).all()
