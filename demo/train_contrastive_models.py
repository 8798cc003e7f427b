"""Trains the motion world's contrastive pair on the CPU, on the same clips and captions as demo/pendulum-motion: a
small X-CLIP (video-text) and its image control, a CLIP on the clips' single frames.

    python demo/train_contrastive_models.py      # writes demo/pendulum-video-clip and demo/pendulum-frame-clip
    python sac_clip.py --env-id Pendulum-v1 --clip-model-id demo/pendulum-video-clip --prompt "a pendulum spinning clockwise"

The 2x2 of docs/pendulum-world.md#the-2x2-time-against-the-training-objective: whether a reward knows which way the
pole turns is a matter of time (one frame against a window) or of the training objective (denoising against
contrastive). The denoising pair is demo/pendulum-motion (+ its adapter); this is the contrastive pair.

1. Data: train_motion_models.render_clips with the same seed, clip count, frames and frame gap as
   train_motion_models.py's defaults, so the very clips and captions (CAPTIONS: spinning clockwise /
   counterclockwise, swinging, at rest; 40/40/10/10%) of pendulum-motion, as 32x32 uint8 frames (the models' input
   size; the pixel values as sac_clip.CLIPReward.preprocess makes them from such frames, with the processor's
   mean and std those of the training frames: frame_statistics).
2. Models, from random weights (both the same towers: a 2-layer text transformer over the character tokenizer, a
   3-layer ViT with 8x8 patches of the 32x32 frame, 32-dim embeddings):
   - pendulum-video-clip: XCLIPModel over windows of 8 frames (the training clips: every 2nd env step, 10 frames/s,
     written to vlm_rm_config.json for sac_clip.py), its cross-frame message tokens, a 1-layer multi-frame
     integration transformer and its video-specific prompt generator;
   - pendulum-frame-clip: CLIPModel on single frames of the same clips, each under its clip's caption.
3. Loss: X-CLIP's own (as it was trained on Kinetics' class names): cross-entropy of each clip's (frame's)
   similarity logits over the four captions, the clip's caption the target. A single frame cannot tell the two spins
   apart, so the frame model's best is to split them; the video model can learn the direction from the frames' order.
4. --eval-every: on held-out spinning clips (train_motion_models.held_out_spins, a seed unlike the training data's)
   the fraction where the logit for "clockwise" minus that for "counterclockwise" has the sign of -omega.

Deterministic for a fixed --threads on one machine (fixed seeds, torch's deterministic algorithms).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_motion_models import CAPTIONS, FRAME_GAP, KINDS, draw_kinds, held_out_spins, render_clips  # noqa: E402
from train_pendulum_models import batches, train_loop, write_char_tokenizer  # noqa: E402

RESOLUTION = 32


@dataclass
class Args:
    out_dir: str = "demo"
    """folder that receives pendulum-video-clip/ and pendulum-frame-clip/"""
    which: tuple[str, ...] = ("video", "frame")
    """which models to train: video (X-CLIP), frame (CLIP on single frames)"""
    clips: int = 1200
    """training clips (pendulum-motion's: 1200)"""
    frames: int = 8
    """frames per clip: the X-CLIP's window (num_frames)"""
    steps: int = 1500
    """AdamW steps per model"""
    batch_size: int = 32
    """clips per step (the frame model: as many single frames)"""
    lr: float = 1e-3
    """peak learning rate (linear warm-up, cosine decay)"""
    hidden: int = 64
    """width of the text and vision transformers"""
    embed_dim: int = 32
    """the shared embedding's size (X-CLIP: also its multi-frame transformer's width)"""
    eval_every: int = 500
    """steps between held-out direction checks (0: none)"""
    eval_clips: int = 64
    """held-out spinning clips per check"""
    seed: int = 0
    """seed of the clips (pendulum-motion's: 0), the weights and the batches"""
    threads: int = 1
    """torch CPU threads (results are reproducible for a fixed thread count on one machine)"""
    save_fp16: bool = True
    """store the weights in float16 (half the size in git; they load as float32 by default)"""


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """render_clips' frames in [-1, 1] -> uint8, as save_clips writes them."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def frame_statistics(frames: torch.Tensor) -> tuple[list[float], list[float]]:
    """The per-channel mean and std of uint8 frames (..., 3, H, W) in [0, 1]: the models' processors normalise with
    them. The Pendulum frames are 99% white (mean 0.99, std 0.02-0.07): under CLIP's ImageNet statistics the pole
    moves the pixel values by a few hundredths, the frames' embeddings start within cosine 0.9998 of each other and
    the frame model never leaves the caption prior (its loss stays at the prior's entropy, 1.19); standardised, it
    learns from the first hundred steps."""
    x = frames.float().div(255).transpose(0, -3).flatten(1)  # (3, everything else)
    return x.mean(1).tolist(), x.std(1).tolist()


def pixel_values(frames: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (..., 3, 32, 32) -> the processor's pixel values (rescale, then the frames' mean and std; no resize at
    32 px)."""
    m, s = (torch.tensor(v).view(3, 1, 1) for v in (mean, std))
    return (frames.float() / 255 - m) / s


def configs(args: Args, tokenizer):
    from transformers import CLIPConfig, XCLIPConfig

    vocab = tokenizer.get_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=3,
                  num_attention_heads=4, image_size=RESOLUTION, patch_size=8)
    video = XCLIPConfig(text_config=text, vision_config=dict(
        **vision, num_frames=args.frames, mit_hidden_size=args.embed_dim, mit_intermediate_size=2 * args.embed_dim,
        mit_num_hidden_layers=1, mit_num_attention_heads=4), projection_dim=args.embed_dim, prompt_layers=1,
        prompt_attention_heads=4, prompt_num_attention_heads=4)
    frame = CLIPConfig(text_config=text, vision_config=vision, projection_dim=args.embed_dim)
    return video, frame


def direction_accuracy(model, tokens: dict, held: dict, video: bool, stats) -> float:
    """Held-out spins: the fraction where logit(clockwise) - logit(counterclockwise) (a clip's frames' mean for the
    frame model) has the sign of -omega (clockwise: omega < 0)."""
    x = pixel_values(to_uint8(held["frames"]), *stats)
    model.eval()
    with torch.no_grad():
        if video:
            logits = model(**tokens, pixel_values=x).logits_per_video
        else:
            n, f = x.shape[:2]
            logits = model(**tokens, pixel_values=x.flatten(0, 1)).logits_per_image.view(n, f, -1).mean(1)
    model.train()
    diff = logits[:, KINDS["cw"]] - logits[:, KINDS["ccw"]]
    return float(((diff > 0) == (held["omega"].mean(1) < 0)).float().mean())


def train_one(name: str, model, args: Args, tokens: dict, x: torch.Tensor, caption: torch.Tensor,
              held: dict | None, stats) -> None:
    video = name == "video"
    g = torch.Generator().manual_seed(args.seed + 2)
    it = batches(len(x), args.batch_size, args.steps, g)
    model.train()

    def loss_fn(step: int) -> torch.Tensor:
        if held is not None and step and step % args.eval_every == 0:
            accuracy = direction_accuracy(model, tokens, held, video, stats)
            print(f"  step {step}: held-out direction accuracy {accuracy:.2f}", flush=True)
        idx = next(it)
        if video:
            logits = model(**tokens, pixel_values=x[idx]).logits_per_video
            return F.cross_entropy(logits, caption[idx])
        frame = torch.randint(0, args.frames, (len(idx),), generator=g)  # one frame of each clip
        logits = model(**tokens, pixel_values=x[idx, frame]).logits_per_image
        return F.cross_entropy(logits, caption[idx])

    train_loop(name, args.steps, list(model.parameters()), loss_fn, lr=args.lr)
    if held is not None:
        print(f"  {name}: held-out direction accuracy {direction_accuracy(model, tokens, held, video, stats):.2f}",
              flush=True)
    model.eval()


def train(args: Args) -> None:
    from transformers import CLIPImageProcessorPil, CLIPModel, VideoMAEImageProcessorPil, XCLIPModel

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)  # train_motion_models.train's draws, in its order: the same clips
    kinds = draw_kinds(args.clips, rng)
    data = render_clips(kinds, args.frames, FRAME_GAP, RESOLUTION, rng)
    frames = to_uint8(data["frames"])
    stats = frame_statistics(frames)
    x = pixel_values(frames, *stats)
    caption = torch.tensor([KINDS[k] for k in kinds])
    print(f"{args.clips} clips of {args.frames} frames rendered ({time.perf_counter() - start:.0f} s): "
          + ", ".join(f"{k} {kinds.count(k)}" for k in KINDS), flush=True)
    held = held_out_spins(args.eval_clips, args.frames, FRAME_GAP, RESOLUTION) if args.eval_every else None

    out = Path(args.out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # X-CLIP's text tower pools at a prompt's largest id: end-of-text
        tokenizer = write_char_tokenizer(Path(tmp), max_length=48, eos_last=True)
    tokens = dict(tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
    video_config, frame_config = configs(args, tokenizer)
    settings = {k: v for k, v in asdict(args).items() if k not in ("out_dir", "which", "threads", "save_fp16")}
    for name in args.which:
        torch.manual_seed(args.seed + 1)
        model = XCLIPModel(video_config) if name == "video" else CLIPModel(frame_config)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
        train_one(name, model, args, tokens, x, caption, held, stats)
        folder = out / f"pendulum-{name}-clip"
        if args.save_fp16:
            model.to(torch.float16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor_cls = VideoMAEImageProcessorPil if name == "video" else CLIPImageProcessorPil
        processor_cls(size={"shortest_edge": RESOLUTION}, crop_size={"height": RESOLUTION, "width": RESOLUTION},
                      image_mean=stats[0], image_std=stats[1]).save_pretrained(folder)
        config = {"comment": f"how demo/train_contrastive_models.py trained it ({'windows of' if name == 'video' else 'single frames of'} "
                             "pendulum-motion's clips); sac_clip.py reads stride and video_fps",
                  **settings}
        if name == "video":  # the training clips' rate: every FRAME_GAP-th Pendulum-v1 step (dt 0.05 s)
            config.update(video_fps=1.0 / (FRAME_GAP * 0.05), stride=args.frames // 2)
        (folder / "vlm_rm_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"done in {time.perf_counter() - start:.0f} s: " + ", ".join(str(out / f"pendulum-{n}-clip")
                                                                       for n in args.which))


if __name__ == "__main__":
    train(tyro.cli(Args))
