"""Trains the two small text-conditioned models of the Pendulum world on the CPU, from rendered Pendulum-v1 frames.

    python demo/train_pendulum_models.py                 # writes demo/pendulum-sd, pendulum-sd3, pendulum-clip
    python demo/train_pendulum_models.py --which sd3     # one of them

Stable Diffusion and CLIP weights cannot be downloaded everywhere, yet the whole loop (render, reward from a
text-conditioned model, SAC, behaviour that matches the text) must be shown to work. This script makes a world
where it can be, in minutes on two CPU cores, deterministically (fixed seeds, fixed thread count, torch's deterministic algorithms):

1. Data. Pendulum-v1 frames at uniformly random pole angles (and random torque arrows, as frames during training
   show them), each captioned by its angle: "a pendulum pointing up" / "... left" / "... down" / "... right".
   The caption of a frame is drawn anew each time it is used, with probability proportional to
   exp(KAPPA * cos(angle - direction)): a pole exactly up is "pointing up" 96% of the time, one at 45 degrees is
   "up" or "left" half the time each. Text-conditioned densities then fall off smoothly with the angle, which is
   what a reward needs (a hard quadrant label would make the reward flat inside each quadrant).
2. demo/pendulum-sd: a complete diffusers StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer,
   scheduler) at 32x32 pixels, 8x8x4 latents. The VAE is trained first as an autoencoder; its scaling_factor is
   then set from the measured latent std, so scaled latents have unit variance as SD's 0.18215 gives them
   (docs/method.md#the-pendulum-world). The text encoder and the UNet are trained together on the epsilon
   objective with the caption dropped for 10% of samples (classifier-free training gives the unconditional prediction that both
   TADPoLe terms compare against). The tokenizer spends one token per character, so its model_max_length and the
   text encoder's positions (48) cover whole captions: truncation would make "up" and "down" identical.
   tadpole_config.json beside the pipeline holds the reward settings measured to work for this model (the recon
   term alone at high noise; see TADPOLE_CONFIG).
3. demo/pendulum-sd3: the foundation-model ablation's second family, with the same data, VAE (the same weights,
   shifted as SD3's are), steps and batch as pendulum-sd: a complete StableDiffusion3Pipeline folder whose denoiser
   is an SD3Transformer2DModel (MMDiT) trained on the rectified-flow objective, with SD3's two CLIP text encoders
   and no T5 (see train_sd3).
4. demo/pendulum-clip: a transformers CLIP checkpoint (CLIPModel, tokenizer, CLIPImageProcessor at 32x32) trained
   with CLIP's contrastive loss against the four captions, using the same soft caption weights as targets.

The folders load through the same from_pretrained(model_id) code paths as hub models:
    python sac_sds.py --env-id Pendulum-v1 --model-id demo/pendulum-sd --prompt "a pendulum pointing up"
    python sac_sds.py --env-id Pendulum-v1 --model-id demo/pendulum-sd3 --prompt "a pendulum pointing up"
    python sac_clip.py --env-id Pendulum-v1 --clip-model-id demo/pendulum-clip --prompt "a pendulum pointing up"
benchmarks/pendulum_world.py measures how well the rewards rank frames and what SAC learns from them.
"""

from __future__ import annotations

import json
import math
import os
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sac_sds  # noqa: E402

DIRECTIONS = {"up": 0.0, "left": math.pi / 2, "down": math.pi, "right": -math.pi / 2}  # Pendulum's angle convention
CAPTIONS = [f"a pendulum pointing {d}" for d in DIRECTIONS]
KAPPA = 4.0  # sharpness of the caption weights exp(KAPPA * cos(angle - direction))
PROMPT_CHARS = string.ascii_lowercase + string.digits + " .,'-!?"
MAX_TOKENS = 48  # start + one token per character + end: "a pendulum pointing right" needs 23
# The diffusion model's own TADPoLe settings, written beside it as tadpole_config.json (sac_sds.py uses them unless
# flags say otherwise). Chosen by measurement (`python benchmarks/pendulum_world.py --what ranking`, docs/pendulum-world.md): on
# held-out frames the align term ranks frames backwards (it measures mismatch) at every noise level, and the recon
# term ranks them best at high noise, so this model's reward is the recon term alone at t in [700, 900).
TADPOLE_CONFIG = {
    "comment": "This model's TADPoLe settings (sac_sds.py uses them unless flags say otherwise). Measured with "
               "`python benchmarks/pendulum_world.py --what ranking`: on held-out frames the align term ranks frames "
               "backwards (by mismatch) at every noise level, and the recon term ranks them best at high noise, so "
               "the reward is the recon term alone at t in [700, 900).",
    "noise_level_base": 700, "noise_level_range": 200, "align_scale": 0.0, "recon_scale": 200.0,
}
SD3_LAYERS = 4
SD3_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline.__call__'s default, which sac_sds.py uses too
# Measured the same way for the SD3-family model: the align term ranks frames backwards here too, and the recon term
# ranks them best at LOW noise (single draw +0.88 at t in [100, 300), +0.76 at [700, 900)), unlike pendulum-sd's.
SD3_TADPOLE_CONFIG = {
    "comment": "This model's TADPoLe settings (sac_sds.py uses them unless flags say otherwise). Measured with "
               "`python benchmarks/pendulum_world.py --what ranking --sds-model demo/pendulum-sd3 --levels ...`: "
               "on held-out frames the align term ranks frames backwards (by mismatch) at every noise level, and "
               "the recon term ranks them best at low noise, so the reward is the recon term alone at t in "
               "[100, 300) (sigma 0.1-0.3).",
    "noise_level_base": 100, "noise_level_range": 200, "align_scale": 0.0, "recon_scale": 200.0,
}


@dataclass
class Args:
    out_dir: str = "demo"
    """folder that receives pendulum-sd/, pendulum-sd3/ and pendulum-clip/"""
    which: tuple[str, ...] = ("sd", "sd3", "clip")
    """which models to train: sd, sd3, clip, or several"""
    frames: int = 4000
    """training frames (each at a uniformly random angle)"""
    resolution: int = 32
    """image size of all models, in pixels"""
    vae_steps: int = 400
    """AdamW steps of the VAE (autoencoder) training"""
    unet_steps: int = 2500
    """AdamW steps of the UNet and text encoder training (and of the SD3 transformer and its text encoders)"""
    clip_steps: int = 800
    """AdamW steps of the CLIP training"""
    batch_size: int = 64
    """images per training step"""
    seed: int = 0
    """seed of everything (angles, arrows, captions, initial weights, noise)"""
    threads: int = 2
    """torch CPU threads (results are reproducible for a fixed thread count on one machine)"""
    save_fp16: bool = True
    """store the weights in float16 (half the size in git; they load as float32 by default)"""


def caption_weights(angles: np.ndarray) -> np.ndarray:
    """(N, 4) probabilities of the four captions for poles at the given angles (radians, 0 = upright)."""
    logits = KAPPA * np.cos(angles[:, None] - np.array(list(DIRECTIONS.values()))[None])
    w = np.exp(logits - logits.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def render_frames(angles: np.ndarray, torques: np.ndarray) -> np.ndarray:
    """uint8 frames (N, 500, 500, 3) of Pendulum-v1 with the pole at each angle; torque NaN draws no arrow."""
    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    env.reset(seed=0)
    frames = []
    for angle, torque in zip(angles, torques):
        env.unwrapped.state = np.array([angle, 0.0])
        env.unwrapped.last_u = None if np.isnan(torque) else float(torque)
        frames.append(env.render())
    env.close()
    return np.stack(frames)


def make_dataset(n: int, resolution: int, rng: np.random.Generator, clip_processor=None) -> dict:
    """Random angles and arrows; frames as the SD reward sees them (sac_sds.SDSReward.to_pixels: [-1, 1],
    antialiased bilinear resize) and, given a processor, as CLIP sees them (pixel values)."""
    angles = rng.uniform(-math.pi, math.pi, n)
    torques = np.where(rng.random(n) < 0.25, np.nan, rng.uniform(-2.0, 2.0, n))  # no arrow on reset frames
    sd, clip = [], []
    for start in range(0, n, 250):  # 500x500 frames are large: convert them in chunks
        frames = render_frames(angles[start:start + 250], torques[start:start + 250])
        sd.append(sac_sds.SDSReward.to_pixels(frames, resolution))
        if clip_processor is not None:
            clip.append(clip_processor(images=list(frames), return_tensors="pt").pixel_values)
    return {"angles": torch.tensor(angles, dtype=torch.float32), "sd": torch.cat(sd),
            "clip": torch.cat(clip) if clip else None, "weights": torch.tensor(caption_weights(angles))}


def write_char_tokenizer(folder: Path, max_length: int = MAX_TOKENS, eos_last: bool = False):
    """A CLIP tokenizer over single characters (vocab.json + merges.txt without merges): one token per character,
    CLIP's "</w>" marking the last character of each word. Saved to folder and returned. eos_last: the end-of-text
    token takes the last id, as in CLIP's own vocabulary (X-CLIP's text tower pools at the largest id of a prompt)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0} if eos_last else {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in PROMPT_CHARS.replace(" ", ""):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    if eos_last:
        vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


def text_config(vocab_size: int, hidden: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch_size,), generator=generator)


def train_loop(name: str, steps: int, params, loss_fn, lr: float) -> None:
    """AdamW with a linear warm-up and cosine decay; prints progress every 10% of the steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    start, running = time.perf_counter(), None
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            print(f"  {name} step {step + 1}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)


def train_vae(args: Args, x: torch.Tensor, g: torch.Generator, shift: bool = False):
    """The Pendulum world's VAE: 32x32x3 <-> 8x8x4, reconstruction loss plus a small KL term (as SD's VAE, without
    the GAN). Its latents are then measured on the data and the config set so that the scaled latents have unit
    variance: scaling_factor = 1 / std (SD's convention), and with shift (SD3's), shift_factor = their mean and
    latents = (mean - shift_factor) * scaling_factor. Returns the VAE and the scaled latents of x."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
                        latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, sample_size=args.resolution)
    it = batches(len(x), args.batch_size, args.vae_steps, g)

    def vae_loss(step):
        xb = x[next(it)]
        posterior = vae.encode(xb).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        return F.mse_loss(vae.decode(z).sample, xb) + 1e-6 * posterior.kl().mean()

    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters")
    train_loop("vae", args.vae_steps, vae.parameters(), vae_loss, lr=1e-3)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(x[i:i + 500]).latent_dist.mean for i in range(0, len(x), 500)])
    if shift:
        vae.register_to_config(shift_factor=float(latents.mean()))
        latents = latents - vae.config.shift_factor
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    print(f"  latent std {1 / scale:.3f}: scaling_factor set to {scale:.4f}"
          + (f", shift_factor {vae.config.shift_factor:.4f}" if shift else ""))
    return vae, latents * scale


def train_sd(args: Args, data: dict, folder: Path) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    g = torch.Generator().manual_seed(args.seed + 1)
    x = data["sd"]
    torch.manual_seed(args.seed + 1)

    vae, latents = train_vae(args, x, g)

    # 2. text encoder + UNet on the epsilon objective, captions dropped for 10% of samples
    tokenizer = write_char_tokenizer(folder.parent / ".pendulum-sd-tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer.get_vocab()), 64)))
    unet = UNet2DConditionModel(  # cross-attention to the text at the 4x4 level and in the middle block
        sample_size=args.resolution // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=4,
        norm_num_groups=16,
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)  # SD's schedule
    tokens = tokenizer([""] + CAPTIONS, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    it = batches(len(x), args.batch_size, args.unet_steps, g)

    def unet_loss(step):
        idx = next(it)
        caption = torch.multinomial(data["weights"][idx], 1, generator=g).squeeze(1) + 1  # 1..4; 0 is ""
        caption[torch.rand(len(idx), generator=g) < 0.1] = 0  # classifier-free dropout
        embeddings = text_encoder(tokens)[0][caption]
        noise = torch.randn(latents[idx].shape, generator=g)
        # half the samples at any noise level, half at t in [300, 700), around the reward's default 400-500
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        t[: len(idx) // 2] = torch.randint(300, 700, (len(idx) // 2,), generator=g)
        z_t = scheduler.add_noise(latents[idx], noise, t)
        return F.mse_loss(unet(z_t, t, encoder_hidden_states=embeddings).sample, noise)

    print(f"UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, text encoder "
          f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")
    train_loop("unet", args.unet_steps, list(unet.parameters()) + list(text_encoder.parameters()), unet_loss, lr=1e-3)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if args.save_fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(folder)
    (folder / "tadpole_config.json").write_text(json.dumps(TADPOLE_CONFIG, indent=2) + "\n")


def train_sd3(args: Args, data: dict, folder: Path) -> None:
    """The SD3-family model of the foundation-model ablation: the same data, VAE design, steps and batch as
    pendulum-sd; a complete StableDiffusion3Pipeline folder whose denoiser is an SD3Transformer2DModel (MMDiT)
    trained on the rectified-flow objective (x_t = (1 - sigma) z + sigma eps, predict v = eps - z), with SD3's two
    CLIP text encoders (penultimate hidden states concatenated, pooled projections concatenated) and no T5, so
    encode_prompt gives the transformer zeros in T5's place, as SD3 without its third encoder runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    g = torch.Generator().manual_seed(args.seed + 1)  # pendulum-sd's: the same VAE weights (then shifted)
    torch.manual_seed(args.seed + 1)
    vae, latents = train_vae(args, data["sd"], g, shift=True)

    tokenizer = write_char_tokenizer(folder.parent / ".pendulum-sd3-tokenizer")
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**text_config(len(tokenizer.get_vocab()), 64),
                                                          projection_dim=32)) for _ in range(2)]
    transformer = SD3Transformer2DModel(  # 4x4 patches of 2x2 latent pixels; joint attention with the text
        sample_size=args.resolution // 4, patch_size=2, in_channels=4, out_channels=4, num_layers=SD3_LAYERS,
        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=64,
        pooled_projection_dim=64, pos_embed_max_size=args.resolution // 4 // 2,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3's (sampling only)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoders[0],
                                    tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)
    it = batches(len(latents), args.batch_size, args.unet_steps, g)

    def flow_loss(step):
        idx = next(it)
        caption = torch.multinomial(data["weights"][idx], 1, generator=g).squeeze(1) + 1  # 1..4; 0 is ""
        caption[torch.rand(len(idx), generator=g) < 0.1] = 0  # classifier-free dropout
        # the pipeline's own text path (with gradients), at its __call__'s max_sequence_length
        embeds, _, pooled, _ = pipe.encode_prompt([""] + CAPTIONS, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=SD3_MAX_SEQUENCE_LENGTH)
        noise = torch.randn(latents[idx].shape, generator=g)
        # as for pendulum-sd: half the samples at any noise level, half at sigma in [0.3, 0.7)
        sigma = torch.rand(len(idx), generator=g)
        sigma[: len(idx) // 2] = 0.3 + 0.4 * torch.rand(len(idx) // 2, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * latents[idx] + s * noise
        v = transformer(x_t, timestep=sigma * 1000, encoder_hidden_states=embeds[caption],
                        pooled_projections=pooled[caption]).sample
        return F.mse_loss(v, noise - latents[idx])

    print(f"SD3 transformer: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters, text "
          f"encoders {sum(p.numel() for e in encoders for p in e.parameters()) / 1e6:.2f} M")
    params = list(transformer.parameters()) + [p for e in encoders for p in e.parameters()]
    train_loop("sd3", args.unet_steps, params, flow_loss, lr=1e-3)
    for m in (transformer, *encoders):
        m.eval()
    if args.save_fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(folder)
    (folder / "tadpole_config.json").write_text(json.dumps(SD3_TADPOLE_CONFIG, indent=2) + "\n")


def train_clip(args: Args, data: dict, folder: Path, processor) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(args.seed + 2)
    g = torch.Generator().manual_seed(args.seed + 2)
    tokenizer = write_char_tokenizer(folder.parent / ".pendulum-clip-tokenizer")
    config = CLIPConfig(
        text_config=text_config(len(tokenizer.get_vocab()), 64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=args.resolution, patch_size=4),
        projection_dim=32,
    )
    model = CLIPModel(config)
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    pixels, weights = data["clip"], data["weights"]
    it = batches(len(pixels), args.batch_size, args.clip_steps, g)

    def clip_loss(step):
        # CLIP's contrastive loss where the texts are the four captions and the targets their soft weights
        idx = next(it)
        img = model.get_image_features(pixel_values=pixels[idx])
        txt = model.get_text_features(**tokens)
        img, txt = (getattr(e, "pooler_output", e) for e in (img, txt))
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        return -(weights[idx] * logits.log_softmax(-1)).sum(-1).mean()

    print(f"CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    train_loop("clip", args.clip_steps, model.parameters(), clip_loss, lr=1e-3)
    model.eval()
    if args.save_fp16:
        model.to(torch.float16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)


def main(args: Args) -> None:
    from transformers import CLIPImageProcessorPil

    unknown = set(args.which) - {"sd", "sd3", "clip"}
    if unknown:
        sys.exit(f"error: --which {' '.join(sorted(unknown))}: choose from sd, sd3, clip")
    torch.set_num_threads(args.threads)
    # the same bytes from one seed: the CPU's backward of indexing with repeated indices (the captions'
    # embeddings, embeds[caption]) otherwise adds in an order that depends on thread timing on a busy machine
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    processor = CLIPImageProcessorPil(size={"shortest_edge": args.resolution},
                                      crop_size={"height": args.resolution, "width": args.resolution})
    rng = np.random.default_rng(args.seed)
    data = make_dataset(args.frames, args.resolution, rng, processor if "clip" in args.which else None)
    print(f"{args.frames} frames rendered and preprocessed ({time.perf_counter() - start:.0f} s)")
    if "sd" in args.which:
        train_sd(args, data, out / "pendulum-sd")
    if "sd3" in args.which:
        train_sd3(args, data, out / "pendulum-sd3")
    if "clip" in args.which:
        train_clip(args, data, out / "pendulum-clip", processor)
    for tmp in (".pendulum-sd-tokenizer", ".pendulum-sd3-tokenizer", ".pendulum-clip-tokenizer"):  # the tokenizers' source files
        for f in (out / tmp).glob("*"):
            f.unlink()
        if (out / tmp).exists():
            (out / tmp).rmdir()
    print(f"done in {time.perf_counter() - start:.0f} s: {', '.join(str(out / f'pendulum-{w}') for w in args.which)}")


if __name__ == "__main__":
    main(tyro.cli(Args))
