"""Trains the motion world's two models on the CPU, from Pendulum-v1 clips: an image model and a video model that know
"a pendulum spinning clockwise" from "a pendulum spinning counterclockwise" only if they see time.

    python demo/train_motion_models.py        # writes demo/pendulum-motion and demo/pendulum-motion-adapter

No single frame shows which way a pole turns: the known answer of this world is a motion. The models:
- demo/pendulum-motion: a complete diffusers StableDiffusionPipeline folder (the image model, the control), and
- demo/pendulum-motion-adapter: an AnimateDiff MotionAdapter; with it, the same pipeline is the video model:
    python sac_sds.py --env-id Pendulum-v1 --model-id demo/pendulum-motion \\
        --motion-adapter-id demo/pendulum-motion-adapter --prompt "a pendulum spinning clockwise"

1. Data. Clips as SAC renders them: env.render() frames after consecutive Pendulum-v1 steps under uniformly random
   torques (the torque arrow shows, and says nothing of the direction), one frame every FRAME_GAP env steps
   (10 frames/s; the video model's tadpole_config.json asks sac_sds.py for the same rate with video_fps). Four kinds
   of clip (KIND_FRACTIONS), each captioned by what it shows throughout (CAPTIONS): spinning clockwise or
   counterclockwise (the pole passes over the top and keeps its direction: on screen, a positive angular velocity
   turns the pole counterclockwise), swinging (it never passes the top) and at rest (hanging, small torques).
   Single frames must not tell the directions apart (draw_clip, start_state): a clip is kept only if it keeps its
   kind under its torques and under their negatives, and a spin starts at an angle drawn from the time a spin
   spends there (tests/test_motion_world.py checks both).
2. The start: demo/pendulum-sd's VAE (frozen: both worlds share their latents), tokenizer, text encoder and UNet,
   fine-tuned. The noise schedule is AnimateDiff's linear one (sac_sds.py's video path uses it), saved as the
   pipeline's scheduler so that the image model is trained and scored on the same one.
3. Training, every step: the video loss of UNetMotionModel (the UNet with the adapter's motion modules inserted) on
   clips, one text embedding per frame, plus the image loss of the UNet alone on single frames of other clips, both
   on the epsilon objective with 10% of captions dropped. The UNet's weights are the SAME tensors in both (tied),
   and the text encoder is trained by both: the motion modules learn time, the spatial layers stay an image model
   (the control is then exactly the video model without its motion modules, trained on the same captioned frames).
   An image model cannot tell the two spins apart (the same frames under both captions); a video model could.
   The committed models did not learn to (docs/pendulum-world.md#the-motion-world-does-a-video-reward-know-which-way-a-pole-turns): training pulls the two spin captions together
   in the text encoder, with the image loss kept from it (--text-encoder-loss video) or dropped (--image-loss-weight
   0) as well; with the text encoder frozen (--text-encoder-loss none) the direction stays at chance too;
   --eval-every prints how far apart the captions are.
4. --eval-every: the fraction of held-out spinning clips (seed unlike the training data's) on which the reward
   for "clockwise" minus that for "counterclockwise" has the sign of -omega, for both models, scored by
   sac_sds.SDSReward itself (benchmarks/pendulum_world.py --what motion-ranking measures it in full).

Deterministic for a fixed --threads on one machine (fixed seeds, torch's deterministic algorithms).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sac_sds  # noqa: E402
from train_pendulum_models import batches, train_loop  # noqa: E402

CW, CCW = "a pendulum spinning clockwise", "a pendulum spinning counterclockwise"
SWING, REST = "a pendulum swinging", "a pendulum at rest"
CAPTIONS = [CW, CCW, SWING, REST]
KINDS = {"cw": 0, "ccw": 1, "swing": 2, "rest": 3}  # kind -> caption index
KIND_FRACTIONS = (0.4, 0.4, 0.1, 0.1)
FRAME_GAP = 2  # env steps between the frames of a training clip: 0.1 s in Pendulum-v1 (dt 0.05 s)
G_OVER_L = 15.0  # Pendulum-v1: d(omega)/dt = 3g/(2l) sin(theta) + 3u/(ml^2), g = 10, l = m = 1
# Each model's settings, written beside it as tadpole_config.json: pendulum-sd's (recon alone at t in [700, 900)),
# kept because `benchmarks/pendulum_world.py --what motion-ranking` measured them to work: with them the video model
# tells a spinning clip from the same clip frozen on 93% of held-out clips (one draw; the image model 27%). Neither
# tells the spin direction at any level the trainer checks (t 500, 700, 850; docs/pendulum-world.md#the-motion-world-does-a-video-reward-know-which-way-a-pole-turns). The video
# model's windows: 8 frames (its training clips) every 4, at the training clips' rate (video_fps, written by train()).
VIDEO_TADPOLE_CONFIG = {
    "noise_level_base": 700, "noise_level_range": 200, "align_scale": 0.0, "recon_scale": 200.0,
    "context_size": 8, "stride": 4,
}
IMAGE_TADPOLE_CONFIG = {"noise_level_base": 700, "noise_level_range": 200, "align_scale": 0.0, "recon_scale": 200.0}


@dataclass
class Args:
    out_dir: str = "demo"
    """folder that receives pendulum-motion/ and pendulum-motion-adapter/"""
    init: str = "demo/pendulum-sd"
    """the pose world's pipeline to start from (its VAE is kept as it is)"""
    clips: int = 1200
    """training clips"""
    frames: int = 8
    """frames per training clip (the video model's window, context_size)"""
    steps: int = 3500
    """AdamW steps"""
    batch_size: int = 16
    """clips per step for the video loss (and twice as many single frames for the image loss)"""
    lr: float = 1e-3
    """peak learning rate (linear warm-up, cosine decay)"""
    eval_every: int = 500
    """steps between held-out checks of both models (0: none)"""
    eval_clips: int = 64
    """held-out spinning clips per check"""
    focus_levels: tuple[int, int] = (400, 900)
    """half of each loss's samples take their noise level t in [low, high) (the rest anywhere in [0, 1000))"""
    eval_levels: tuple[int, ...] = (500, 700, 850)
    """the noise levels of the --eval-every check"""
    text_encoder_loss: Literal["both", "video", "none"] = "both"
    """which losses train the text encoder: both, video alone (the image loss then takes the caption embeddings
    detached: does the image loss, to which the two spins look alike, pull their captions together?), or none
    (pendulum-sd's, frozen)"""
    image_loss_weight: float = 1.0
    """weight of the image loss (0: the video loss alone, and the UNet an image model only as the video model's
    spatial layers)"""
    seed: int = 0
    """seed of everything (clips, captions, initial weights, noise)"""
    threads: int = 2
    """torch CPU threads (results are reproducible for a fixed thread count on one machine)"""
    save_fp16: bool = True
    """store the weights in float16 (half the size in git; they load as float32 by default)"""
    context_frames: int = 0
    """the video loss with context frames: the first K frames of each clip enter the UNet clean (their latents
    un-noised, the clip's level t for the rest) and the loss is taken over the other frames only, as sac_sds.py
    --context-frames K scores them (the adapter's tadpole_config.json then sets context_frames K); 0: every frame
    noised, as the committed demo/pendulum-motion was trained"""
    name: str = ""
    """the folders' names, NAME/ and NAME-adapter/ in --out-dir (default pendulum-motion, and with --context-frames
    pendulum-motion-context)"""


def start_state(kind: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """(theta, omega, torque scale) at the start of a clip of this kind (theta 0 = up)."""
    if kind in ("cw", "ccw"):
        # energy enough to pass the top at omega_top in [1, 2] (more would pass the bottom above the max speed, 8),
        # and the start angle drawn from the time the spin spends at each angle (density 1 / |omega(theta)|), as
        # frames of a long spin fall: from a uniform start angle, clockwise clips would show the pole on one side
        # more often than counterclockwise ones, a direction an image model could read from single frames
        omega_top = rng.uniform(1.0, 2.0)
        while True:
            theta = rng.uniform(-math.pi, math.pi)
            omega = math.sqrt(omega_top ** 2 + 2 * G_OVER_L * (1 - math.cos(theta)))
            if rng.random() < omega_top / omega:
                break
        return theta, min(omega, 8.0) * (-1 if kind == "cw" else 1), 2.0
    if kind == "swing":  # amplitude 25-145 degrees from the bottom, anywhere in the swing
        amp = rng.uniform(0.45, 2.5)
        delta = rng.uniform(-amp, amp)
        omega = math.sqrt(2 * G_OVER_L * (math.cos(delta) - math.cos(amp))) * rng.choice([-1, 1])
        return math.pi + delta, omega, 2.0
    return math.pi + rng.uniform(-0.1, 0.1), rng.uniform(-0.3, 0.3), 0.3  # rest


def keeps_kind(kind: str, thetas: np.ndarray, omegas: np.ndarray) -> bool:
    """Whether a simulated clip shows its kind throughout: a spin keeps its direction and turns at least a quarter
    turn; a swing or rest never passes the top."""
    if kind == "cw":
        return bool((omegas < 0).all() and thetas[0] - thetas[-1] > math.pi / 2)
    if kind == "ccw":
        return bool((omegas > 0).all() and thetas[-1] - thetas[0] > math.pi / 2)
    lowest = np.cos(thetas) < math.cos(0.3)  # never within 17 degrees of the top
    return bool(lowest.all())


def draw_clip(env, kind: str, steps: int, rng: np.random.Generator) -> tuple[tuple[float, float], np.ndarray]:
    """A start state and torques (one per env step) for a clip of this kind. Kept only if the clip keeps its kind
    under its torques AND under their negatives: then the kept clips show every torque sequence as often as its
    negative, and their arrows say nothing of the direction (keeping the clips that keep their kind under their own
    torques only would favour torques along the spin)."""
    while True:
        theta, omega, scale = start_state(kind, rng)
        torques = rng.uniform(-scale, scale, steps)
        if all(keeps_kind(kind, *simulate(env, (theta, omega), sign * torques)[1:]) for sign in (1, -1)):
            return (theta, omega), torques


def simulate(env, state: tuple[float, float], torques: np.ndarray, gap: int = 0):
    """Steps the (unwrapped) Pendulum-v1 env from state under the torques: its env.render() after every gap-th step
    (none for gap 0), and the angle and angular velocity after every step."""
    env.state = np.array(state)
    shots, thetas, omegas = [], [], []
    for step, u in enumerate(torques):
        env.step(np.array([u], dtype=np.float32))
        thetas.append(env.state[0])
        omegas.append(env.state[1])
        if gap and (step + 1) % gap == 0:
            shots.append(env.render())
    return shots, np.array(thetas), np.array(omegas)


def render_clips(kinds: list[str], frames: int, gap: int, resolution: int, rng: np.random.Generator,
                 chunk: int = 256) -> dict:
    """Clips of the given kinds (draw_clip): frames (N, frames, 3, resolution, resolution) in [-1, 1] as
    sac_sds.SDSReward.encode makes them from env.render() frames (to_pixels), with the angular velocity and the
    torque (its arrow) at each frame (N, frames). One frame after every gap-th env step, from the first step on."""
    env = gym.make("Pendulum-v1", render_mode="rgb_array").unwrapped  # unwrapped: no time limit inside a clip
    env.reset(seed=0)
    out, omegas, applied, pending = [], [], [], []

    def flush():
        out.append(sac_sds.SDSReward.to_pixels(np.stack(pending), resolution))
        pending.clear()

    for kind in kinds:
        state, torques = draw_clip(env, kind, frames * gap, rng)
        shots, _, ws = simulate(env, state, torques, gap)
        pending += shots
        omegas.append(ws[gap - 1::gap])
        applied.append(torques[gap - 1::gap])  # the arrow each frame shows
        if len(pending) >= chunk:  # 500x500 frames are large: resize them in chunks
            flush()
    if pending:
        flush()
    env.close()
    x = torch.cat(out).view(len(kinds), frames, 3, resolution, resolution)
    return {"frames": x, "omega": torch.tensor(np.array(omegas), dtype=torch.float32),
            "torque": torch.tensor(np.array(applied), dtype=torch.float32)}


def save_clips(folder: Path, kinds: list[str], frames: int, gap: int, resolution: int, rng: np.random.Generator,
               caption: bool = False) -> None:
    """Clips of the given kinds (render_clips) as folders of png frames at the models' resolution, clip000, clip001, ...
    (what customize_motion.py reads); with caption, a captions.json naming each clip's caption (CAPTIONS)."""
    import imageio.v2 as imageio

    x = render_clips(kinds, frames, gap, resolution, rng)["frames"]
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    captions = {}
    for i, (kind, clip) in enumerate(zip(kinds, pixels)):
        (folder / f"clip{i:03d}").mkdir(parents=True, exist_ok=True)
        for f, frame in enumerate(clip):
            imageio.imwrite(folder / f"clip{i:03d}" / f"{f:03d}.png", frame)
        captions[f"clip{i:03d}"] = CAPTIONS[KINDS[kind]]
    if caption:
        (folder / "captions.json").write_text(json.dumps(captions, indent=2) + "\n")


def draw_kinds(n: int, rng: np.random.Generator, fractions=KIND_FRACTIONS) -> list[str]:
    return list(rng.choice(list(KINDS), size=n, p=np.array(fractions) / sum(fractions)))


def held_out_spins(n: int, frames: int, gap: int, resolution: int, kinds: tuple[str, ...] = ("cw", "ccw"),
                   seed: int = 12345) -> dict:
    """n held-out clips of the kinds in turn (default: spinning, half clockwise), rendered with a seed unlike the
    training data's."""
    return render_clips([kinds[i % len(kinds)] for i in range(n)], frames, gap, resolution,
                        np.random.default_rng(seed))


def tie_spatial(motion_unet, unet) -> None:
    """Make UNetMotionModel's spatial layers the very parameters of the image UNet (from_unet2d copied them)."""
    for name, p in unet.named_parameters():
        parent, leaf = name.rsplit(".", 1)
        module = motion_unet.get_submodule(parent)
        assert getattr(module, leaf).shape == p.shape, name
        setattr(module, leaf, p)


def build_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def direction_accuracy(pipe, adapter, latents: torch.Tensor, omega: torch.Tensor, levels: Sequence[int],
                       draws: int = 4, seed: int = 0, context_frames: int = 0) -> dict[int, float]:
    """At each noise level t in levels, the fraction of clips (latents (N, frames, 4, h, w)) where the mean reward
    over the clip's frames for "clockwise" minus that for "counterclockwise" has the sign of -omega, for the video
    model (adapter) or the image model (adapter None), recon term alone, averaged over draws noise draws (the same
    noise for both prompts; the same draws at every level), scored by sac_sds.SDSReward. context_frames (video): the
    clip's first frames enter clean and the mean is over the others (sac_sds.py --context-frames). The reward takes
    over the pipeline's modules (from_pipeline freezes them): pass copies of modules still in training."""
    n, frames = latents.shape[:2]
    k = context_frames if adapter is not None else 0
    reward = sac_sds.SDSReward.from_pipeline(pipe, [CW, CCW], motion_adapter=adapter, context_size=frames,
                                             stride=frames - k, align_scale=0.0, recon_scale=200.0, context_frames=k)
    z = latents if reward.video else latents.flatten(0, 1)
    accuracy = {}
    for t in levels:
        g = torch.Generator().manual_seed(seed)
        tt = torch.full((len(z),), t)
        diff = torch.zeros(n)
        for _ in range(draws):
            eps = torch.randn(latents.shape, generator=g).view(z.shape)
            per_prompt = [reward.combine(*reward.terms(z, tt, eps, prompt=torch.full((len(z),), p))).view(n, -1)
                          .mean(1) for p in (0, 1)]
            diff += (per_prompt[0] - per_prompt[1]) / draws
        accuracy[t] = float(((diff > 0) == (omega.mean(1) < 0)).float().mean())
    return accuracy


def caption_gap(text_encoder, tokenizer) -> float:
    """How far apart the text encoder puts the two spin captions: |e(clockwise) - e(counterclockwise)| / |e(clockwise)|
    over the whole hidden-state sequence (in eval mode; the encoder's mode is kept)."""
    tokens = tokenizer([CW, CCW], padding="max_length", max_length=tokenizer.model_max_length,
                       return_tensors="pt").input_ids
    training = text_encoder.training
    with torch.no_grad():
        e = text_encoder.eval()(tokens)[0].flatten(1)
    text_encoder.train(training)
    return float((e[0] - e[1]).norm() / e[0].norm())


def train(args: Args) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # the pipeline is built and cast several times; its notes are noise
    if not 0 <= args.context_frames < args.frames:
        sys.exit(f"error: --context-frames {args.context_frames} must be in [0, --frames {args.frames}): the loss needs "
                 "frames to denoise")
    torch.set_num_threads(args.threads)
    # the same bytes from one seed: the CPU's backward of indexing with repeated indices (the captions'
    # embeddings, embeds[caption]) otherwise adds in an order that depends on thread timing on a busy machine
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    init = Path(args.init)
    if not init.is_absolute() and not init.exists():  # relative to the repository, from anywhere
        init = Path(__file__).resolve().parent.parent / init
    if not (init / "model_index.json").is_file():
        sys.exit(f"error: --init {init} is not a pipeline folder; train it first: python demo/train_pendulum_models.py "
                 "--which sd")
    vae = AutoencoderKL.from_pretrained(init / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(init / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", torch_dtype=torch.float32).train()
    unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32).train()
    resolution = vae.config.sample_size
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", num_train_timesteps=1000,
                              steps_offset=1, clip_sample=False)  # AnimateDiff's

    rng = np.random.default_rng(args.seed)
    kinds = draw_kinds(args.clips, rng)
    data = render_clips(kinds, args.frames, FRAME_GAP, resolution, rng)
    caption = torch.tensor([KINDS[k] for k in kinds]) + 1  # 1..4; 0 is ""
    with torch.no_grad():
        x = data["frames"].flatten(0, 1)
        latents = torch.cat([vae.encode(x[i:i + 500]).latent_dist.mean for i in range(0, len(x), 500)])
        latents = (latents * vae.config.scaling_factor).view(args.clips, args.frames, *latents.shape[1:])
    print(f"{args.clips} clips of {args.frames} frames rendered and encoded ({time.perf_counter() - start:.0f} s): "
          + ", ".join(f"{k} {kinds.count(k)}" for k in KINDS), flush=True)
    eval_data = None
    if args.eval_every:
        held = held_out_spins(args.eval_clips, args.frames, FRAME_GAP, resolution)
        with torch.no_grad():
            z = vae.encode(held["frames"].flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor
        eval_data = (z.view(args.eval_clips, args.frames, *z.shape[1:]), held["omega"])

    torch.manual_seed(args.seed + 1)
    adapter = MotionAdapter(block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=1,
                            motion_num_attention_heads=4, motion_norm_num_groups=16, motion_max_seq_length=32,
                            use_motion_mid_block=True)
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter).train()
    tie_spatial(motion_unet, unet)
    motion_params = [p for n, p in motion_unet.named_parameters() if "motion_modules" in n]
    text_params = list(text_encoder.parameters())
    if args.text_encoder_loss == "none":
        text_encoder.eval().requires_grad_(False)
        text_params = []
    params = list(unet.parameters()) + text_params + motion_params
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, motion modules "
          f"{sum(p.numel() for p in motion_params) / 1e6:.2f} M, text encoder "
          f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M", flush=True)
    tokens = tokenizer([""] + CAPTIONS, padding="max_length", max_length=tokenizer.model_max_length,
                       return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(args.seed + 2)
    clips_it = batches(args.clips, args.batch_size, args.steps, g)
    frames_it = batches(args.clips, 2 * args.batch_size, args.steps, g)

    def noisy(z: torch.Tensor, t: torch.Tensor):
        noise = torch.randn(z.shape, generator=g)
        return scheduler.add_noise(z, noise, t), noise

    def timesteps(n: int) -> torch.Tensor:
        # half the samples at any noise level, half at t in --focus-levels, where the rewards read the motion
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
        t[: n // 2] = torch.randint(*args.focus_levels, (n // 2,), generator=g)
        return t

    def keep(cap: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.rand(len(cap), generator=g) < 0.1, 0, cap)  # classifier-free dropout

    def loss_fn(step: int) -> torch.Tensor:
        if eval_data is not None and step and step % args.eval_every == 0:
            evaluate(step)
        embeddings = text_encoder(tokens)[0]
        idx = next(clips_it)  # video loss: whole clips, one t per clip, one embedding per frame
        z = latents[idx]
        t = timesteps(len(idx))
        z_t, noise = noisy(z.flatten(0, 1), t.repeat_interleave(args.frames))
        b, f = z.shape[:2]
        context = embeddings[keep(caption[idx])].repeat_interleave(f, 0)
        z_t = z_t.view(b, f, *z.shape[2:])
        k = args.context_frames  # context frames: clean in, no loss on them
        if k:
            z_t = torch.cat([z[:, :k], z_t[:, k:]], 1)
        pred = motion_unet(z_t.transpose(1, 2), t, encoder_hidden_states=context).sample.transpose(1, 2)
        video = F.mse_loss(pred[:, k:].flatten(0, 1), noise.view(b, f, *z.shape[2:])[:, k:].flatten(0, 1))
        if not args.image_loss_weight:
            return video
        jdx = next(frames_it)  # image loss: one random frame of each of other clips
        frame = torch.randint(0, args.frames, (len(jdx),), generator=g)
        t = timesteps(len(jdx))
        z_t, noise = noisy(latents[jdx, frame], t)
        if args.text_encoder_loss == "video":
            embeddings = embeddings.detach()
        image = F.mse_loss(unet(z_t, t, encoder_hidden_states=embeddings[keep(caption[jdx])]).sample, noise)
        return video + args.image_loss_weight * image

    def evaluate(step: int) -> None:
        copy_motion_modules(motion_unet, adapter)
        gap = caption_gap(text_encoder, tokenizer)
        # on copies: the reward freezes the modules it is given and drops the VAE's decoder; one pipeline serves both
        pipe = build_pipeline(*[copy.deepcopy(m).eval() for m in (vae, text_encoder)], tokenizer,
                              copy.deepcopy(unet).eval(), scheduler)
        with torch.no_grad():
            video = direction_accuracy(pipe, copy.deepcopy(adapter).eval(), *eval_data, levels=args.eval_levels,
                                       context_frames=args.context_frames)
            image = direction_accuracy(pipe, None, *eval_data, levels=args.eval_levels)
        print(f"  step {step}: held-out direction accuracy (video / image) " +
              ", ".join(f"t {t}: {video[t]:.2f} / {image[t]:.2f}" for t in args.eval_levels) +
              f"; caption gap (clockwise vs counterclockwise) {gap:.3f}", flush=True)

    train_loop("motion", args.steps, params, loss_fn, lr=args.lr)
    text_encoder.eval(), unet.eval(), motion_unet.eval()
    copy_motion_modules(motion_unet, adapter)
    pipe = build_pipeline(vae, text_encoder, tokenizer, unet, scheduler)
    if args.save_fp16:
        pipe.to(torch.float16)
        adapter.to(torch.float16)
    out = Path(args.out_dir)
    name = args.name or ("pendulum-motion-context" if args.context_frames else "pendulum-motion")
    pipe.save_pretrained(out / name)
    adapter.save_pretrained(out / f"{name}-adapter")
    video_fps = 1.0 / (FRAME_GAP * sac_sds.env_timing(sac_sds.Args(env_id="Pendulum-v1"))[0])  # the training clips' rate
    video_config = {**VIDEO_TADPOLE_CONFIG, "video_fps": video_fps}
    if args.context_frames:
        video_config["context_frames"] = args.context_frames
    for folder, config, what in ((out / name, IMAGE_TADPOLE_CONFIG, "image model"),
                                 (out / f"{name}-adapter", video_config, "video model")):
        comment = (f"The {what}'s TADPoLe settings (sac_sds.py uses them unless flags say otherwise), measured with "
                   "`python benchmarks/pendulum_world.py --what motion-ranking` (docs/pendulum-world.md#the-motion-world-does-a-video-reward-know-which-way-a-pole-turns).")
        (folder / "tadpole_config.json").write_text(json.dumps({"comment": comment, **config}, indent=2) + "\n")
    print(f"done in {time.perf_counter() - start:.0f} s: {out / name}, {out / f'{name}-adapter'}")


def copy_motion_modules(motion_unet, adapter) -> None:
    """The trained motion modules back into the MotionAdapter (its down, mid and up blocks, as load_motion_modules
    copied them out)."""
    for i, block in enumerate(adapter.down_blocks):
        block.motion_modules.load_state_dict(motion_unet.down_blocks[i].motion_modules.state_dict())
    for i, block in enumerate(adapter.up_blocks):
        block.motion_modules.load_state_dict(motion_unet.up_blocks[i].motion_modules.state_dict())
    if adapter.config.use_motion_mid_block:
        adapter.mid_block.motion_modules.load_state_dict(motion_unet.mid_block.motion_modules.state_dict())


if __name__ == "__main__":
    train(tyro.cli(Args))
