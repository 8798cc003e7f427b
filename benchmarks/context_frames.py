"""The motion world's hypothesis, measured: does a video model that sees a window's first frames clean use the
caption's direction (sac_sds.py --context-frames)?

    python benchmarks/context_frames.py --clips 100 --contexts 0 1 2 --levels 500 700 850

For each model (--models: a pipeline folder and its motion adapter) and each context K (--contexts), on --clips
held-out spinning clips (half clockwise; 8 frames, every 2nd env step, as the models were trained and as sac_sds.py
windows Pendulum-v1; the held-out seed of demo/train_motion_models.py's --eval-every check):

- caption use: at each noise level t, the mean squared difference between the noise predictions under "clockwise"
  and under "counterclockwise" (and "at rest", and no caption), from the same noisy clip whose first K frames are
  clean, over the other frames, beside the prediction's own error (benchmarks/pendulum_world.py --what caption-use
  is the K = 0 case). A recon reward tells two captions apart by no more than this.
- direction accuracy: demo/train_motion_models.py's direction_accuracy (the trainer's held-out check, recon alone,
  the mean of --draws noise draws, sac_sds.SDSReward with context_frames K): the fraction of clips on which
  reward(clockwise) - reward(counterclockwise) has the sign of -omega. The image control (the same pipeline without
  its adapter, K = 0: an image model has no context) beside it.

Results: stdout and {out}/context-frames.md, context-frames.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))


@dataclass
class Args:
    models: tuple[str, ...] = ("demo/pendulum-motion", "demo/pendulum-motion-context")
    """pipeline folders; each is scored with the motion adapter NAME-adapter beside it (and alone, the image control)"""
    contexts: tuple[int, ...] = (0, 1, 2)
    """context frames K to score the video models with"""
    levels: tuple[int, ...] = (500, 700, 850)
    """noise levels t"""
    clips: int = 100
    """held-out spinning clips (half clockwise)"""
    draws: int = 4
    """noise draws per clip for the direction accuracy (the sign of their mean)"""
    threads: int = 1
    """torch CPU threads"""
    out: str = "runs/context_frames"
    """folder of the results files"""


def load(folder: str, adapter: bool):
    """A fresh pipeline (float32; the reward takes over its modules) and its adapter (or None)."""
    from diffusers import MotionAdapter, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ROOT / folder, torch_dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    return pipe, (MotionAdapter.from_pretrained(ROOT / f"{folder}-adapter", torch_dtype=torch.float32)
                  if adapter else None)


def caption_use(reward, z: torch.Tensor, levels, k: int, seed: int = 0) -> list[dict]:
    """Mean squared differences of the noise predictions under the captions, over the frames after the first k
    (which enter clean), per level. reward: an SDSReward with the prompts [CW, CCW, REST] (rows 1-3; 0 no caption)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in levels:
        noise = torch.randn(z.shape, generator=g)
        zz, eps = (z, noise) if reward.video else (z.flatten(0, 1), noise.flatten(0, 1))
        tt = torch.full((len(zz),), t)
        with torch.no_grad():
            z_t = reward.family.noised(zz, eps, tt)
            if k:
                z_t = torch.cat([zz[:, :k], z_t[:, k:]], 1)
            pred = [reward.family.epsilon(z_t, tt, torch.full((len(zz),), row)) for row in range(4)]
        if k:
            pred, eps = [p[:, k:] for p in pred], eps[:, k:]
        msd = lambda a, b: float((pred[a] - pred[b]).pow(2).mean())  # noqa: E731
        rows.append({"t": t, "error": float((pred[1] - eps).pow(2).mean()), "cw_ccw": msd(1, 2), "cw_rest": msd(1, 3),
                     "cw_unconditional": msd(1, 0)})
    return rows


def main(args: Args) -> dict:
    import sac_sds
    from train_motion_models import CCW, CW, FRAME_GAP, REST, caption_gap, direction_accuracy, held_out_spins

    torch.set_num_threads(args.threads)
    start = time.time()
    spins = held_out_spins(args.clips, 8, FRAME_GAP, 32)
    results = {"clips": args.clips, "draws": args.draws, "levels": list(args.levels), "models": {}}
    for folder in args.models:
        pipe, _ = load(folder, False)
        gap = caption_gap(pipe.text_encoder, pipe.tokenizer)
        vae = pipe.vae
        with torch.no_grad():
            z = vae.encode(spins["frames"].flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor
        z = z.view(args.clips, 8, *z.shape[1:])
        row = {"caption_gap": gap, "video": {}, "image": {}}
        for name, ks in (("video", args.contexts), ("image", (0,))):
            for k in ks:
                pipe, adapter = load(folder, name == "video")
                accuracy = direction_accuracy(pipe, adapter, z, spins["omega"], args.levels, draws=args.draws,
                                              context_frames=k)
                pipe, adapter = load(folder, name == "video")
                reward = sac_sds.SDSReward.from_pipeline(pipe, [CW, CCW, REST], motion_adapter=adapter, context_size=8,
                                                         stride=8 - k, context_frames=k)
                use = caption_use(reward, z, args.levels, k)
                row[name][k] = {"direction_accuracy": accuracy, "caption_use": use}
                print(f"  {folder} {name} K {k}: direction accuracy " +
                      ", ".join(f"t {t} {a:.2f}" for t, a in accuracy.items()) + "; cw-ccw " +
                      ", ".join(f"{r['cw_ccw']:.1e}" for r in use) + f" ({time.time() - start:.0f} s)", flush=True)
        results["models"][folder] = row

    lines = [f"{args.clips} held-out spinning clips of 8 frames (every {FRAME_GAP} env steps). Direction accuracy: the "
             f"fraction where reward(clockwise) - reward(counterclockwise) (recon alone, mean of {args.draws} noise "
             "draws, over the frames after the K context frames) has the sign of -omega (0.5: chance). Caption use: "
             "mean squared difference of the noise predictions under two captions from the same noisy clip, over "
             "the frames after the context", "",
             "| model | scored as | K | t | direction accuracy | prediction error | clockwise vs counterclockwise | "
             "clockwise vs at rest | clockwise vs no caption |", "|---|---|---|---|---|---|---|---|---|"]
    for folder, row in results["models"].items():
        for name in ("video", "image"):
            for k, cell in row[name].items():
                for use in cell["caption_use"]:
                    lines.append(f"| {folder} | {name} | {k} | {use['t']} | "
                                 f"{cell['direction_accuracy'][use['t']]:.2f} | {use['error']:.1e} | "
                                 f"{use['cw_ccw']:.1e} | {use['cw_rest']:.1e} | {use['cw_unconditional']:.1e} |")
    lines += ["", "|e(clockwise) - e(counterclockwise)| / |e(clockwise)| in each text encoder: " +
              ", ".join(f"{f} {row['caption_gap']:.3f}" for f, row in results["models"].items()),
              f"({(time.time() - start) / 60:.1f} min)"]
    results["table"] = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context-frames.md").write_text(results["table"] + "\n")
    (out / "context-frames.json").write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
