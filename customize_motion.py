"""Motion customisation: a few clips of a motion teach a text-to-video diffusion model a new token for it, so that the
video reward can ask an agent for a motion nobody can describe in words.

    python customize_motion.py --model-id demo/pendulum-motion --motion-adapter-id demo/pendulum-motion-adapter \
        --clips my_swing_clips/ --phrase "a pendulum doing {token}" --out runs/custom-swing
    python sac_sds.py --env-id Pendulum-v1 --model-id demo/pendulum-motion \
        --motion-adapter-id demo/pendulum-motion-adapter --customization runs/custom-swing \
        --prompt "a pendulum doing sks"
    python customize_motion.py --model-id cerspense/zeroscope_v2_576w --clips clips/ \
        --phrase "a person doing {token}" --regularization reference_clips/ --out runs/custom-dance

The recipe is Materzynska et al., "Customizing Motion in Text-to-Video Diffusion Models" (2023;
docs/method.md#motion-customisation): fine-tune the temporal layers (motion modules, temporal attention and
convolutions) and the keys and values of the spatial cross-attention on the demonstration clips captioned by a phrase
holding a rare token (default "sks"), regularised by real clips of other motions under their own captions, with the
noise levels sampled mostly among the high ones, where a video's motion is decided. The rest of the model stays
frozen. The folder it writes holds only the trained tensors (customization.safetensors), what they were trained on
(customization.json) and the reward settings with the phrase (tadpole_config.json); sac_sds.py, SDSReward and
eval_videos.py load it on top of the model it was made from.

--clips: a folder of mp4 files or of folders of frames (png/jpg, in name order), or a run folder of sac_*.py whose
policy is recorded for --record-episodes episodes. --regularization: such a folder of clips, with a captions.json
naming each clip's caption (by file or folder name). Every clip must have the window's frames (--frames, every
--frame-stride-th). Bad input (no clips, an unreadable or empty clip, clips shorter than the window, an image model, a
phrase without the token) is one line, exit status 2, nothing written. A progress bar; SIGTERM/SIGUSR1 save a
checkpoint in --out (exit 75), Ctrl-C too (exit 130; a second Ctrl-C stops at once), and --resume continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import sac_sds
from sac_sds import EXIT_CTRL_C, Interrupted, SDSReward, UserError, on_stop_signals, stopped  # the SAC scripts'
# signals and errors


@dataclass
class Args:
    """Customise a text-to-video diffusion model to the motion of a few clips (docs/method.md#motion-customisation)."""

    model_id: str = ""
    """the diffusers pipeline (hub id or local folder): an SD 1.x/2.x model with --motion-adapter-id (AnimateDiff), or
    a video model (ZeroScope/ModelScope)"""
    motion_adapter_id: Optional[str] = None
    """AnimateDiff motion adapter that makes an SD model a video model (its motion modules are trained)"""
    clips: str = ""
    """the demonstration clips: a folder of mp4 files or of frame folders, or a run folder to record episodes from"""
    token: str = "sks"
    """the new word for the motion (a rare token, as DreamBooth's and the paper's V*)"""
    phrase: str = "a video of {token}"
    """the demonstrations' caption; must contain {token} (or the token itself)"""
    regularization: Optional[str] = None
    """a folder of clips of other motions with a captions.json (name -> caption): trained under their own captions,
    so that the model keeps what it knew"""
    train: tuple[Literal["temporal", "cross-kv"], ...] = ("temporal", "cross-kv")
    """which parameters train: the temporal layers, and/or the keys and values of the spatial cross-attention"""
    image_control: bool = False
    """customise an image model instead (single frames, cross-attention keys and values): the control that shows
    what frames alone carry"""
    frames: Optional[int] = None
    """frames per training window (default: the video reward's window length for this model)"""
    frame_stride: int = 1
    """a window takes every k-th frame of a clip"""
    steps: int = 600
    """optimizer steps"""
    batch_size: int = 8
    """windows per step (half from --regularization when given)"""
    lr: float = 3e-4
    """AdamW learning rate"""
    high_noise_fraction: float = 0.7
    """the fraction of training samples whose noise level is drawn from [--high-noise-from, T) (the rest: [0, T))"""
    high_noise_from: int = 500
    """where the high noise levels start (of the model's T training steps)"""
    uncond_fraction: float = 0.1
    """the fraction of samples trained without caption, so the unconditional prediction stays the model's"""
    record_episodes: int = 8
    """--clips is a run folder: its deterministic episodes to record"""
    out: str = "runs/customization"
    """the folder written: customization.safetensors, customization.json, tadpole_config.json"""
    resume: bool = False
    """continue from --out's checkpoint.pt (left by a job stopped by a signal)"""
    checkpoint_every: int = 100
    """steps between checkpoints (0: only on signals)"""
    seed: int = 0
    """seed of the windows, noise levels and noise"""
    device: str = "auto"
    """torch device: auto (cuda if available), cpu, cuda, ..."""
    threads: int = 0
    """torch CPU threads (0: torch's default; results repeat for a fixed count on one machine)"""
    progress: bool = True
    """show a progress bar"""


# ----- the training step: the epsilon loss of the diffusion model on noised windows of the clips -----
def loss_of(reward: SDSReward, latents: torch.Tensor, rows: torch.Tensor, args: Args,
            generator: torch.Generator) -> torch.Tensor:
    """The denoising loss mean((eps_hat(z_t, t, caption) - eps)^2) on latents (B, frames, C, h, w) (image control:
    (B, C, h, w)), rows: each sample's caption (a conditioning row of the reward's model, 0 the unconditional)."""
    b, total = len(latents), reward.num_train_timesteps
    high = torch.rand(b, generator=generator) < args.high_noise_fraction
    t = torch.where(high, torch.randint(args.high_noise_from, total, (b,), generator=generator),
                    torch.randint(0, total, (b,), generator=generator)).to(reward.device)
    noise = torch.randn(latents.shape, generator=generator).to(reward.device)
    z_t = reward.family.noised(latents, noise, t)
    return F.mse_loss(reward.family.epsilon(z_t, t, rows), noise)


def trained_parameters(denoiser: nn.Module, groups: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The parameters --train names: 'temporal' = AnimateDiff's motion modules, ZeroScope's temporal attention,
    convolutions and input transformer; 'cross-kv' = to_k and to_v of the spatial cross-attention (attn2 outside the
    temporal layers)."""
    out = {}
    for name, p in denoiser.named_parameters():
        temporal = re.search(r"motion_modules|temp_attentions|temp_convs|transformer_in\.", name) is not None
        cross_kv = not temporal and re.search(r"attn2\.to_[kv]\.", name) is not None
        if ("temporal" in groups and temporal) or ("cross-kv" in groups and cross_kv):
            out[name] = p
    return out


def customize(args: Args) -> dict:
    """Trains and writes --out; returns customization.json's content. UserError for bad input, before anything is
    written; Interrupted (after a checkpoint) on SIGTERM/SIGUSR1 or Ctrl-C (a second Ctrl-C: at once, the last
    checkpoint kept)."""
    out = check_args(args)
    sac_sds.seed_everything(sac_sds.SACArgs(seed=args.seed, threads=args.threads))  # as the SAC scripts seed
    device = sac_sds.resolve_device(args.device)
    phrase = args.phrase.replace("{token}", args.token)
    captions = read_captions(args.regularization) if args.regularization else {}
    texts = [phrase, *sorted(set(captions.values()) - {phrase})]  # the conditioning rows 1, 2, ... (0: unconditional)
    reward, window = load_model(args, device, texts)
    demos = read_clips(args.clips, window, args, "--clips", reward)
    demo_windows, demo_rows = windows_of(demos, window, args, reward, [1] * len(demos))
    reg_windows = reg_rows = None
    if args.regularization:
        regular = read_clips(args.regularization, window, args, "--regularization", reward)
        missing = [name for name, _ in regular if name not in captions]
        if missing:
            raise UserError(f"--regularization {args.regularization}: captions.json has no caption for {missing[:3]}")
        reg_windows, reg_rows = windows_of(regular, window, args, reward,
                                           [texts.index(captions[name]) + 1 for name, _ in regular])
    params = trained_parameters(reward.family.denoiser, ("cross-kv",) if args.image_control else args.train)
    if not params:
        raise UserError(f"--train {' '.join(args.train)} names no parameter of this {type(reward.family.denoiser).__name__}")
    # All parameters take gradients (on this CPU build of torch, a backward pass through UNetMotionModel with only
    # some of them requiring grad crashed); only the trained ones are in the optimizer.
    reward.family.denoiser.requires_grad_(device.type == "cpu")
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(params.values()), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "losses": [], "seconds": 0.0}
    ckpt = out / "checkpoint.pt"
    if args.resume:
        state = resume(ckpt, params, opt, generator, args)
    stop, saved = {"signal": None}, state["step"] if args.resume else None
    handlers = on_stop_signals(lambda signum: stop.update(signal=signum))
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=state["step"], unit="step", dynamic_ncols=True)
    start = time.perf_counter() - state["seconds"]
    try:
        while state["step"] < args.steps:
            latents, rows = batch(demo_windows, demo_rows, reg_windows, reg_rows, args, generator, reward.device)
            loss = loss_of(reward, latents, rows, args, generator)
            loss.backward()
            opt.step()
            reward.family.denoiser.zero_grad(set_to_none=True)
            state["step"] += 1
            state["losses"].append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(state['losses'][-20:]):.4f}", refresh=False)
            every = args.checkpoint_every and state["step"] % args.checkpoint_every == 0
            if every or stop["signal"] is not None:
                state["seconds"] = time.perf_counter() - start
                save_checkpoint(ckpt, params, opt, generator, state, args)
                saved = state["step"]
            if stop["signal"] is not None:
                raise stopped(stop["signal"], f"at step {state['step']}: checkpoint saved in {ckpt}; continue with "
                                              "the same command and --resume")
    except KeyboardInterrupt:  # a second Ctrl-C
        kept = f"the checkpoint of step {saved} in {ckpt} is kept" if saved is not None else "nothing was saved"
        raise Interrupted(f"Ctrl-C again at step {state['step']}: stopped at once; {kept}", EXIT_CTRL_C) from None
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    state["seconds"] = time.perf_counter() - start
    info = {"model_id": args.model_id, "motion_adapter_id": args.motion_adapter_id, "phrase": phrase,
            "token": args.token, "image_control": args.image_control, "window": window,
            "frame_stride": args.frame_stride, "trained": sorted({group_of(n) for n in params}),
            "parameters": sum(p.numel() for p in params.values()), "tensors": len(params),
            "clips": len(demos), "windows": len(demo_windows),
            "regularization_windows": 0 if reg_windows is None else len(reg_windows), "steps": args.steps, "lr": args.lr,
            "seconds": round(state["seconds"], 1), "final_loss": float(np.mean(state["losses"][-20:])),
            "args": dataclasses.asdict(args)}
    write_folder(out, params, info, window)
    ckpt.unlink(missing_ok=True)
    return info


def batch(demo_windows, demo_rows, reg_windows, reg_rows, args: Args, generator: torch.Generator, device):
    """args.batch_size windows (half from the regularisation clips when there are some) and their caption rows,
    a --uncond-fraction of them set to the unconditional row 0."""
    n_reg = args.batch_size // 2 if reg_windows is not None else 0
    pick = torch.randint(0, len(demo_windows), (args.batch_size - n_reg,), generator=generator)
    latents, rows = [demo_windows[pick]], [demo_rows[pick]]
    if n_reg:
        pick = torch.randint(0, len(reg_windows), (n_reg,), generator=generator)
        latents.append(reg_windows[pick])
        rows.append(reg_rows[pick])
    rows = torch.cat(rows)
    rows = torch.where(torch.rand(len(rows), generator=generator) < args.uncond_fraction, torch.zeros_like(rows), rows)
    return torch.cat(latents).to(device), rows.to(device)


def group_of(name: str) -> str:
    return "cross-kv" if re.search(r"attn2\.to_[kv]\.", name) and "motion_modules" not in name else "temporal"


# ----- the clips -----
def read_clips(path: str, window: int, args: Args, flag: str, reward: SDSReward) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 frames (F, H, W, 3)) of every clip under path (see the module docstring); UserError for none,
    an unreadable or empty one, or one shorter than the window."""
    folder = Path(path)
    if not path or not folder.is_dir():
        raise UserError(f"{flag} {path!r}: no such folder; give a folder of mp4 files or of frame folders, or a run "
                        "folder")
    if (folder / "args.json").is_file() and (folder / "checkpoint.pt").is_file():
        clips = record_run(folder, args.record_episodes, reward.resolution)
    else:
        clips = []
        for item in sorted(folder.iterdir()):
            if item.suffix.lower() in (".mp4", ".avi", ".mov", ".webm"):
                clips.append((item.stem, read_video(item, flag)))
            elif item.is_dir():
                clips.append((item.name, read_frame_folder(item, flag)))
    if not clips:
        raise UserError(f"{flag} {path}: no clips (mp4 files or folders of png/jpg frames) in it")
    need = (window - 1) * args.frame_stride + 1
    for name, frames in clips:
        if len(frames) == 0:
            raise UserError(f"{flag} {path}: clip '{name}' has no frames")
        if len(frames) < need:
            raise UserError(f"{flag} {path}: clip '{name}' has {len(frames)} frames; a window takes {need} ({window} "
                            f"frames, every {args.frame_stride}): give longer clips or lower --frames")
    return clips


def read_video(path: Path, flag: str) -> np.ndarray:
    import imageio.v2 as imageio

    try:
        with imageio.get_reader(path) as reader:
            frames = [np.asarray(f)[..., :3] for f in reader]
    except Exception as e:
        raise UserError(f"{flag}: cannot read the video {path} ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:150]})") from None
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def read_frame_folder(folder: Path, flag: str) -> np.ndarray:
    import imageio.v2 as imageio

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    frames = []
    for f in files:
        try:
            image = np.asarray(imageio.imread(f))
        except Exception as e:
            raise UserError(f"{flag}: cannot read the frame {f} ({type(e).__name__})") from None
        frames.append(np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3])
    if frames and len({f.shape for f in frames}) > 1:
        raise UserError(f"{flag}: the frames of {folder} differ in size; give frames of one size per clip")
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def record_run(run: Path, episodes: int, size: int) -> list[tuple[str, np.ndarray]]:
    """Deterministic episodes of a trained run's policy (its env and scene from args.json), as clips."""
    import sac_env_reward as core

    actor, saved = core.load_actor(run)
    known = {f.name for f in dataclasses.fields(core.SACArgs)}
    env = core.make_env(core.SACArgs(**{**{k: v for k, v in saved.items() if k in known}, "render_size": size}),
                        render=True)
    clips = []
    for ep in range(episodes):
        frames = core.evaluate(actor, env, 1, 10_000 + ep, torch.device("cpu"), record=True)[2]
        clips.append((f"{run.name}_episode{ep}", np.stack(frames)))
    env.close()
    return clips


def read_captions(path: str) -> dict[str, str]:
    """--regularization's captions.json: clip name -> caption."""
    file = Path(path) / "captions.json"
    try:
        captions = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--regularization {path}: no readable captions.json ({type(e).__name__}); write one mapping "
                        'each clip\'s name to its caption, e.g. {"clip1": "a pendulum swinging"}') from None
    if not isinstance(captions, dict) or not all(isinstance(v, str) and v.strip() for v in captions.values()):
        raise UserError(f"--regularization {path}: captions.json must map clip names to non-empty captions")
    return captions


def windows_of(clips, window: int, args: Args, reward: SDSReward, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of every clip (every frame_stride-th frame, from every start frame), as latents
    (W, window, C, h, w) (image control: single frames (W, C, h, w)) encoded once by the model's frozen VAE, and
    each window's caption row (rows: one per clip)."""
    latents, out_rows = [], []
    span = (window - 1) * args.frame_stride + 1
    for (_, frames), row in zip(clips, rows):
        z = torch.cat([reward.encode(frames[a:a + 64]) for a in range(0, len(frames), 64)]).cpu()
        for start in range(0, len(z) - span + 1):
            w = z[start:start + span:args.frame_stride]
            latents.append(w[0] if args.image_control else w)
            out_rows.append(row)
    return torch.stack(latents), torch.tensor(out_rows)


# ----- the model, the folder, the checkpoint -----
def load_model(args: Args, device: torch.device, prompts: list[str]) -> tuple[SDSReward, int]:
    """The model as sac_sds.SDSReward loads it (the same families, conditioning and latents), in float32, with the
    conditioning of each prompt; its denoiser is then trained. And the window length."""
    reward = SDSReward.from_pretrained(args.model_id, prompts, dtype="fp32", device=device,
                                       motion_adapter_id=None if args.image_control else args.motion_adapter_id)
    if not reward.video and not args.image_control:
        raise UserError(f"--model-id {args.model_id} is an image model: motion customisation trains a video model's "
                        "temporal layers; add --motion-adapter-id (AnimateDiff), use a video model such as ZeroScope, "
                        "or --image-control for the image control")
    if isinstance(reward.family, sac_sds.WanFamily):
        raise UserError("Wan's transformer has no temporal layers of its own to customise; use AnimateDiff "
                        "(--motion-adapter-id) or ZeroScope")
    window = 1 if args.image_control else (args.frames or reward.context_size)
    return reward, window


def check_args(args: Args) -> Path:
    """The --out folder; UserError for bad flags, before anything is read or written."""
    if not args.model_id:
        raise UserError("--model-id is required: the pipeline to customise, e.g. --model-id demo/pendulum-motion "
                        "--motion-adapter-id demo/pendulum-motion-adapter")
    if not args.token.strip() or any(c.isspace() for c in args.token):
        raise UserError(f"--token {args.token!r}: give one word, e.g. --token sks")
    if "{token}" not in args.phrase and not re.search(rf"\b{re.escape(args.token)}\b", args.phrase):
        raise UserError(f"--phrase {args.phrase!r} does not contain the token: write it as {{token}}, e.g. "
                        f"--phrase \"a pendulum doing {{token}}\"")
    for name in ("steps", "batch_size", "frame_stride", "record_episodes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames must be at least 1 (got {args.frames})")
    if not 0 <= args.high_noise_fraction <= 1 or not 0 <= args.uncond_fraction < 1 or not args.lr > 0:
        raise UserError("--high-noise-fraction must be in [0, 1], --uncond-fraction in [0, 1), --lr positive")
    out = Path(args.out)
    if (out / sac_sds.CUSTOMIZATION).is_file():
        raise UserError(f"--out {out} already holds a customisation; pick another folder")
    if args.resume and not (out / "checkpoint.pt").is_file():
        raise UserError(f"--resume: no checkpoint in {out}; start without --resume")
    if not args.resume and (out / "checkpoint.pt").is_file():
        raise UserError(f"--out {out} holds a checkpoint of an interrupted customisation: add --resume to continue it")
    return out


def write_folder(out: Path, params: dict[str, nn.Parameter], info: dict, window: int) -> None:
    """The folder's three files, each written to a temporary name and then renamed."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to(torch.float16).contiguous() for name, p in params.items()}  # as the demo models
    save_file(tensors, out / (sac_sds.CUSTOMIZATION + ".tmp"), metadata={"phrase": info["phrase"]})
    os.chmod(out / (sac_sds.CUSTOMIZATION + ".tmp"), 0o644)  # (safetensors writes it readable by its owner only)
    config = {"phrase": info["phrase"], "token": info["token"],
              "comment": "made by customize_motion.py: the demonstrations' phrase and the video windows it was trained on"}
    if not info["image_control"]:  # the reward's windows as trained, half overlapping
        config["context_size"], config["stride"] = window, max(1, window // 2)
    for name, content in (("customization.json", info), (sac_sds.TADPOLE_CONFIG, config)):
        (out / (name + ".tmp")).write_text(json.dumps(content, indent=2) + "\n")
    for name in (sac_sds.CUSTOMIZATION, "customization.json", sac_sds.TADPOLE_CONFIG):
        os.replace(out / (name + ".tmp"), out / name)


def save_checkpoint(path: Path, params, opt, generator, state: dict, args: Args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"args": dataclasses.asdict(args), "state": state, "params": {k: p.detach() for k, p in params.items()},
            "optimizer": opt.state_dict(), "generator": generator.get_state(), "torch": torch.get_rng_state()}
    torch.save(data, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def resume(path: Path, params, opt, generator, args: Args) -> dict:
    """The state of an interrupted customisation (tensors and plain values only: weights_only=True)."""
    data = torch.load(path, weights_only=True)
    saved = {k: v for k, v in data["args"].items() if k not in ("resume", "progress", "out")}
    given = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("resume", "progress", "out")}
    changed = [k for k in given if json.dumps(given[k]) != json.dumps(saved.get(k))]
    if changed:
        raise UserError(f"--resume: the checkpoint in {path.parent} was made with other flags ({', '.join(changed)}); "
                        "repeat its command line with --resume")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(data["params"][name])
    opt.load_state_dict(data["optimizer"])
    generator.set_state(data["generator"])
    torch.set_rng_state(data["torch"])
    print(f"resumed {path.parent} at step {data['state']['step']}")
    return data["state"]


def main() -> None:
    args = tyro.cli(Args)
    try:
        info = customize(args)
        print(f"wrote {args.out}: {info['parameters'] / 1e6:.2f} M parameters ({', '.join(info['trained'])}) trained "
              f"{info['steps']} steps on {info['clips']} clips in {info['seconds']:.0f} s; reward with --customization "
              f"{args.out} --prompt \"{info['phrase']}\"")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("Ctrl-C before training started: stopped; nothing was written", file=sys.stderr)
        sys.exit(EXIT_CTRL_C)


if __name__ == "__main__":
    main()
