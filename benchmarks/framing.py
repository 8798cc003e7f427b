"""How much of each frame the body fills, stock scene beside natural, and what the natural scene costs to render.

    python benchmarks/framing.py                                     # every preset env: table, contact sheets
    python benchmarks/framing.py --envs Walker2d-v4 dm_control/dog-stand-v0 --steps 60
    python benchmarks/framing.py --what speed --sizes 256 512        # frames/s, stock against natural

--what framing: for each env and each setting (--scene stock, --scene natural, and --protocol tadpole where it
applies), one episode of uniform random actions (up to --steps), a frame every --every steps rendered by the env's
own render() and, through the same camera, MuJoCo's segmentation render: a pixel is the body's if it shows a geom of
a body other than the world (or a skin: the dm_control dog is drawn as one). Printed: the median and the minimum of
the fraction over the episode. Written under --out: framing.md (the table), and per env a contact sheet,
{env}.png: a row of frames per setting, evenly spaced over the episode (docs/scenes.md shows them).

--what speed: frames/s of env.render() (after a step each) at each --sizes, stock against natural, in --rounds
interleaved rounds of --frames frames; the median per setting and the ratio natural / stock per round.

The segmentation uses the camera the frames come from: gymnasium's (a model camera, or its free camera) or
dm_control's camera of the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ["MUJOCO_GL"] = os.environ.get("MUJOCO_GL") or "egl"  # unset or empty: EGL
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mujoco  # noqa: E402

import sac_env_reward as core  # noqa: E402

GYM_BODIES = ("Hopper", "Walker2d", "HalfCheetah", "Ant", "Humanoid")
ENVS = [f"{b}-{v}" for v in ("v4", "v5") for b in GYM_BODIES] + [
    f"dm_control/{t}-v0" for t in ("humanoid-stand", "dog-stand", "walker-walk", "cheetah-run", "quadruped-walk")]


def settings(env_id: str) -> list[tuple[str, dict]]:
    """The settings compared for an env: (label, SACArgs fields)."""
    out = [("stock", {"scene": "stock"}), ("natural", {"scene": "natural"})]
    if core.env_key(env_id) in core.TADPOLE:
        out.append(("tadpole", {"scene": "natural", "protocol": "tadpole"}))
    return out


class BodyFraction:
    """The fraction of an env's frame that shows its body, by MuJoCo's segmentation render through the env's
    camera."""

    def __init__(self, env, size: int):
        inner = env.unwrapped
        self.physics = getattr(getattr(inner, "_env", None), "physics", None)  # shimmy's dm_control
        self.size = size
        if self.physics is not None:
            self.model = self.physics.model.ptr
            self.camera = inner.render_kwargs.get("camera_id", 0)
        else:
            self.model, self.data, self.renderer = inner.model, inner.data, inner.mujoco_renderer
            self.seg = mujoco.Renderer(self.model, size, size)
            self.seg.enable_segmentation_rendering()

    def __call__(self) -> float:
        if self.physics is not None:
            seg = self.physics.render(self.size, self.size, camera_id=self.camera, segmentation=True)
        else:
            camera = self.renderer.camera_id
            self.seg.update_scene(self.data, camera=self.renderer.viewer.cam if camera in (None, -1) else camera)
            seg = self.seg.render()
            self.renderer.viewer.make_context_current()
        ids, types = seg[..., 0], seg[..., 1]
        geom = (types == mujoco.mjtObj.mjOBJ_GEOM) & (ids >= 0)
        body = geom & (self.model.geom_bodyid[np.clip(ids, 0, self.model.ngeom - 1)] > 0)
        return float((body | (types == mujoco.mjtObj.mjOBJ_SKIN)).mean())

    def close(self) -> None:
        if self.physics is None:
            self.seg.close()


def make(env_id: str, size: int, fields: dict):
    return core.make_env(core.SACArgs(env_id=env_id, render_size=size, **fields), render=True)


def framing(env_id: str, fields: dict, size: int, steps: int, every: int, seed: int):
    """(fractions over the episode, frames) of one random-policy episode."""
    env = make(env_id, size, fields)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    measure = BodyFraction(env, size)
    fractions, frames, step = [], [], 0
    for step in range(1, steps + 1):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if step % every == 1 or every == 1 or terminated or truncated:
            frames.append(env.render())
            fractions.append(measure())
        if terminated or truncated:
            break
    measure.close()
    env.close()
    return np.array(fractions), frames, step


def contact_sheet(rows: list[list[np.ndarray]], path: Path, columns: int = 6, thumb: int = 128) -> None:
    import imageio.v2 as imageio
    import torch
    import torch.nn.functional as F

    lines = []
    for frames in rows:
        picks = [frames[i] for i in np.linspace(0, len(frames) - 1, columns).round().astype(int)]
        x = torch.from_numpy(np.stack(picks)).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(thumb, thumb), mode="bilinear", antialias=True)
        lines.append(np.concatenate(list(x.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.concatenate(lines, 0))


def run_framing(args) -> None:
    out = Path(args.out)
    rows = ["| env | setting | steps | body: median | min | max |", "|-|-|-|-|-|-|"]
    for env_id in args.envs:
        sheet = []
        for label, fields in settings(env_id):
            fractions, frames, steps = framing(env_id, fields, args.size, args.steps, args.every, args.seed)
            sheet.append(frames)
            row = (f"| {env_id} | {label} | {steps} | {100 * np.median(fractions):.1f}% | "
                   f"{100 * fractions.min():.1f}% | {100 * fractions.max():.1f}% |")
            rows.append(row)
            print(row, flush=True)
        contact_sheet(sheet, out / f"{env_id.replace('/', '_')}.png")
    (out / "framing.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def run_speed(args) -> None:
    rows = ["| env | size | stock frames/s | natural frames/s | natural / stock per round: median (range) |",
            "|-|-|-|-|-|"]
    for env_id in args.envs:
        for size in args.sizes:
            envs = {label: make(env_id, size, {"scene": label}) for label in ("stock", "natural")}
            for env in envs.values():
                env.reset(seed=args.seed)
                env.render()  # the first frame uploads the textures: not timed
            rates = {label: [] for label in envs}
            for _ in range(args.rounds):
                for label, env in envs.items():
                    spent = 0.0
                    for _ in range(args.frames):
                        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                        if terminated or truncated:
                            env.reset()
                        start = time.perf_counter()
                        env.render()
                        spent += time.perf_counter() - start
                    rates[label].append(args.frames / spent)
            ratios = [n / s for n, s in zip(rates["natural"], rates["stock"])]
            row = (f"| {env_id} | {size} | {statistics.median(rates['stock']):.1f} | "
                   f"{statistics.median(rates['natural']):.1f} | {statistics.median(ratios):.2f} "
                   f"({min(ratios):.2f}-{max(ratios):.2f}) |")
            rows.append(row)
            print(row, flush=True)
            for env in envs.values():
                env.close()
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("framing", "speed"), default="framing")
    parser.add_argument("--envs", nargs="+", default=ENVS, help="env ids (default: every preset env)")
    parser.add_argument("--size", type=int, default=256, help="framing: frame size in pixels")
    parser.add_argument("--steps", type=int, default=1000, help="framing: at most this many steps of the episode")
    parser.add_argument("--every", type=int, default=4, help="framing: a frame every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/framing", help="framing: folder for framing.md and contact sheets")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="speed: frame sizes")
    parser.add_argument("--frames", type=int, default=20, help="speed: frames per setting and round")
    parser.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    args = parser.parse_args()
    run_framing(args) if args.what == "framing" else run_speed(args)


if __name__ == "__main__":
    main()
