"""Pendulum world: known-answer results for the text rewards, with the models trained by demo/train_pendulum_models.py.

    python benchmarks/pendulum_world.py --what ranking      # do the rewards rank held-out frames by the pole angle?
    python benchmarks/pendulum_world.py --what rl --jobs 2  # SAC from each reward, 3 seeds: return and pole angle

ranking: held-out frames at random angles (seed unlike the training data's); for each prompt, the Spearman rank
correlation over frames between the reward (and, for SDS, each of its two terms) and cos(angle), i.e. how upright
the pole is. SDS draws t and the noise per frame as training does, so its figure is that of the single-sample
reward SAC sees; "mean of N" also gives the correlation of the reward averaged over N noise draws.

rl: each configuration (--configs) trains --seeds seeds for --steps steps as its own process (one torch thread,
--jobs at a time) as runs/pendulum_world__CONFIG__sSEED; then every trained actor plays --eval-episodes deterministic
episodes (the same start states for every configuration, and for the random policy, which is the floor;
env-reward SAC is the ceiling). Reported per configuration, mean +- std over seeds: the environment's own return,
the mean absolute pole angle (0 = up, 180 = down) over the whole episode and over each half of it, and the
fraction of steps with the pole within 30 degrees of upright; angles.png plots the mean angle at each step of the
episode. Finished runs are reused, so an interrupted benchmark continues where it stopped. Results go to stdout
and to {out}/rl.md, rl.json and angles.png ({out}/ranking.md and ranking.json for ranking).

The motion world (demo/train_motion_models.py; configs video-*, image-*, with --table motion for the signed angular
velocity): motion-ranking scores held-out clips for three known answers (the spin direction, spinning against at
rest, a spin against the same clip frozen), for the video model and its image control; caption-use measures how
much their noise predictions change when the caption does ({out}/motion-ranking.md, {out}/caption-use.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ["MUJOCO_GL"] = os.environ.get("MUJOCO_GL") or "egl"  # unset or empty: EGL
import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))

UP, DOWN = "a pendulum pointing up", "a pendulum pointing down"
SDS_MODEL, CLIP_MODEL = "demo/pendulum-sd", "demo/pendulum-clip"
SCHEDULE = f"0:{DOWN};100:{UP}"
COMPOSED = f"{UP} (1) with {DOWN} (-1)"  # the composition's row in `ranking`
# This world's diffusion model: the align term ranks frames backwards at every noise level and the recon term ranks
# them best at high noise (`ranking` measures both), so the SDS runs use the recon term alone at t in [700, 900).
# demo/pendulum-sd/tadpole_config.json holds the same settings (so plain `--model-id demo/pendulum-sd` uses them);
# they are spelled out here so that the table shows what ran.
SDS_WORLD = ["--model-id", SDS_MODEL, "--align-scale", "0", "--noise-level-base", "700", "--noise-level-range", "200"]
# The foundation-model ablation's SD3-family model (rectified flow): recon alone as well, but best at low noise
# (demo/pendulum-sd3/tadpole_config.json holds the same settings)
SD3_WORLD = ["--model-id", "demo/pendulum-sd3", "--align-scale", "0", "--noise-level-base", "100",
             "--noise-level-range", "200"]
# The motion world (demo/train_motion_models.py): the video model is the pipeline with its motion adapter, the image
# model (the control) the same pipeline alone; each folder's tadpole_config.json holds its settings
CW, CCW, REST = "a pendulum spinning clockwise", "a pendulum spinning counterclockwise", "a pendulum at rest"
MOTION_MODEL, MOTION_ADAPTER = "demo/pendulum-motion", "demo/pendulum-motion-adapter"
IMAGE_WORLD = ["--model-id", MOTION_MODEL]
VIDEO_WORLD = [*IMAGE_WORLD, "--motion-adapter-id", MOTION_ADAPTER]
MOTION_SCHEDULE = f"0:{CW};100:{CCW}"
# Motion customisation (customize_motion.py): the video model taught "sks" from swinging clips, and the image control
# customised on the same frames (--what demo-clips makes their clips; the commands: docs/pendulum-world.md)
SWING, TOKEN_PHRASE = "a pendulum swinging", "a pendulum doing sks"
CUSTOM_SWING, CUSTOM_SWING_IMAGE = "demo/pendulum-custom-swing", "demo/pendulum-custom-swing-image"
# name -> (script, flags); every run also gets the common SAC flags of run_command
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "env": ("sac_env_reward.py", []),
    "sds-up": ("sac_sds.py", [*SDS_WORLD, "--prompt", UP]),
    "clip-up": ("sac_clip.py", ["--clip-model-id", CLIP_MODEL, "--prompt", UP]),
    "sds-down": ("sac_sds.py", [*SDS_WORLD, "--prompt", DOWN]),
    "clip-down": ("sac_clip.py", ["--clip-model-id", CLIP_MODEL, "--prompt", DOWN]),
    # issue 8: sequence and composition
    "sds-schedule": ("sac_sds.py", [*SDS_WORLD, "--prompt-schedule", SCHEDULE, "--time-feature"]),
    "clip-schedule": ("sac_clip.py", ["--clip-model-id", CLIP_MODEL, "--prompt-schedule", SCHEDULE,
                                      "--time-feature"]),
    "sds-up-not-down": ("sac_sds.py", [*SDS_WORLD, "--prompt", UP, "--prompt-weight", "1",
                                       "--prompt", DOWN, "--prompt-weight", "-1"]),
    "clip-up-not-down": ("sac_clip.py", ["--clip-model-id", CLIP_MODEL, "--prompt", UP, "--prompt-weight", "1",
                                         "--prompt", DOWN, "--prompt-weight", "-1"]),
    # issue 16: the foundation-model ablation (SD3 family)
    "sd3-up": ("sac_sds.py", [*SD3_WORLD, "--prompt", UP]),
    "sd3-down": ("sac_sds.py", [*SD3_WORLD, "--prompt", DOWN]),
    # issue 15: the motion world; the video model, and the image model (its control) on the same prompts
    "video-cw": ("sac_sds.py", [*VIDEO_WORLD, "--prompt", CW]),
    "video-ccw": ("sac_sds.py", [*VIDEO_WORLD, "--prompt", CCW]),
    "video-rest": ("sac_sds.py", [*VIDEO_WORLD, "--prompt", REST]),
    "image-cw": ("sac_sds.py", [*IMAGE_WORLD, "--prompt", CW]),
    "image-ccw": ("sac_sds.py", [*IMAGE_WORLD, "--prompt", CCW]),
    "video-schedule": ("sac_sds.py", [*VIDEO_WORLD, "--prompt-schedule", MOTION_SCHEDULE, "--time-feature"]),
    # the motion world's contrastive pair (demo/train_contrastive_models.py), X-CLIP and its frame control
    "xclip-cw": ("sac_clip.py", ["--clip-model-id", "demo/pendulum-video-clip", "--prompt", CW]),
    "xclip-ccw": ("sac_clip.py", ["--clip-model-id", "demo/pendulum-video-clip", "--prompt", CCW]),
    "xclip-schedule": ("sac_clip.py", ["--clip-model-id", "demo/pendulum-video-clip", "--prompt-schedule",
                                       MOTION_SCHEDULE, "--time-feature"]),
    "frameclip-cw": ("sac_clip.py", ["--clip-model-id", "demo/pendulum-frame-clip", "--prompt", CW]),
    # motion customisation: the token learned from swinging clips, the word, the image control
    "video-swing-token": ("sac_sds.py", [*VIDEO_WORLD, "--customization", CUSTOM_SWING, "--prompt", TOKEN_PHRASE]),
    "video-swing-word": ("sac_sds.py", [*VIDEO_WORLD, "--prompt", SWING]),
    "image-swing-token": ("sac_sds.py", [*IMAGE_WORLD, "--customization", CUSTOM_SWING_IMAGE, "--prompt",
                                         TOKEN_PHRASE]),
}
BASIC = ("random", "env", "sds-up", "clip-up", "sds-down", "clip-down")


@dataclass
class Args:
    what: Literal["ranking", "motion-ranking", "caption-use", "rl", "demo-clips", "custom-ranking", "reward-clips",
                  "random-models", "two-by-two"] = "ranking"
    """ranking: how the reward models rank held-out frames; motion-ranking: whether the motion world's rewards tell
    clockwise from counterclockwise on held-out clips; caption-use: how much the motion world's noise predictions
    depend on the caption; rl: train and evaluate SAC; demo-clips: write demonstration and regularisation clips for
    customize_motion.py; custom-ranking: whether a customised model's token tells its motion from others; reward-clips: clip folders of
    spinning, frozen and resting poles for eval_reward.py; random-models: the Pendulum world's models with random
    weights (the same architectures), for eval_reward.py's known answers; two-by-two: the 2x2 table (time against the
    training objective) from an eval_reward.py run over the reward-clips folders (--eval-dir)"""
    eval_dir: tuple[str, ...] = ("eval_reward/2x2",)
    """two-by-two: the eval_reward.py output folders to read (the same clips and --seed; e.g. one per pair of cells)"""
    configs: tuple[str, ...] = BASIC
    """rl: configurations to run: random, and names from CONFIGS (env, sds-up, clip-up, sds-down, clip-down,
    sds-schedule, clip-schedule, sds-up-not-down, clip-up-not-down, sd3-up, sd3-down)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """rl: training seeds"""
    steps: int = 10_000
    """rl: environment steps per run (of runs still to train; finished runs keep theirs, shown in the table)"""
    learning_starts: int = 1_000
    """rl: random steps before learning"""
    eval_episodes: int = 10
    """rl: deterministic evaluation episodes per trained actor (and for the random policy)"""
    jobs: int = 2
    """rl: runs trained at the same time (each uses one torch thread)"""
    out: str = "runs/pendulum_world"
    """rl: folder of the runs and the results files"""
    table: Literal["poses", "motion", "swing"] = "poses"
    """rl: the table's columns: poses (pole angle, upright), motion (signed angular velocity, the fraction of
    steps turning clockwise), by whole episode and by half, or swing (the fraction of steps in a swing)"""
    demo_kind: Literal["swing", "cw", "ccw"] = "swing"
    """demo-clips: the demonstrations' motion (the regularisation clips: the other kinds, under their captions);
    custom-ranking: the motion the customisation was taught"""
    demo_clips: int = 24
    """demo-clips: demonstration clips (and 3 times as many regularisation clips)"""
    custom_video: str = CUSTOM_SWING
    """custom-ranking: the customised video model's folder"""
    custom_image: str = ""
    """custom-ranking: the image control's folder (none: not scored)"""
    extra: str = ""
    """rl: further flags for every training run, one string, e.g. --extra="--align-scale 0" """
    frames: int = 300
    """ranking: held-out frames"""
    noise_draws: int = 8
    """ranking: noise draws per frame for the SDS reward"""
    sds_model: str = SDS_MODEL
    """ranking: the diffusion model"""
    clip_model: str = CLIP_MODEL
    """ranking: the CLIP model"""
    sds_flags: str = ""
    """ranking: SDS settings as sac_sds.py takes them, one string, e.g. --sds-flags="--align-scale 0" """
    clips: int = 200
    """motion-ranking, caption-use: held-out spinning clips (half of them clockwise)"""
    clip_steps: int = 32
    """motion-ranking: consecutive env steps per clip, one rendered frame each"""
    known_answers: tuple[str, ...] = ("direction", "speed", "motion")
    """motion-ranking: direction (reward(clockwise) - reward(counterclockwise) on spinning clips), speed
    (reward(clockwise) - reward(at rest) on spinning and resting clips), motion (reward(clockwise) of a spinning
    clip minus that of the same clip frozen at its first frame: for an image model, frames alike), order (the same,
    against the clip's frames shuffled: for an image model, the same frames)"""
    frame_strides: tuple[int, ...] = (1, 2, 4)
    """motion-ranking: frame strides of the video model's windows (every k-th env frame; 2 = 10 frames/s, the rate
    of its training clips)"""
    levels: tuple[int, ...] = ()
    """ranking: also, for each L, the terms at t in [L, L + 100) with the paper's scales (one draw per frame):
    Spearman of align, recon and the reward with cos(angle), and the terms' mean size, for "pointing up";
    motion-ranking: the direction accuracy of both models at each level (video: at the frame stride sac_sds.py
    derives from the adapter's video_fps, 2); caption-use: the levels (default 300 500 700 850)"""


# ----------------------------------------------------------------------------------------------------------------
# ranking
# ----------------------------------------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (values are continuous: no ties)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def held_out_frames(n: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """n frames at random angles with random torque arrows, from a seed the training data did not use."""
    from train_pendulum_models import render_frames

    rng = np.random.default_rng(seed)
    angles = rng.uniform(-math.pi, math.pi, n)
    torques = np.where(rng.random(n) < 0.25, np.nan, rng.uniform(-2.0, 2.0, n))
    return angles, render_frames(angles, torques)


def ranking(args: Args) -> dict:
    import sac_clip
    import sac_sds

    sds_args = tyro.cli(sac_sds.Args, args=["--prompt", UP, "--model-id", args.sds_model, *shlex.split(args.sds_flags)])
    sac_sds.apply_tadpole_defaults(sds_args)  # the model's tadpole_config.json, unless the flags say otherwise
    angles, frames = held_out_frames(args.frames)
    upright = np.cos(angles)
    results: dict = {"frames": args.frames, "noise_draws": args.noise_draws, "sds": {}, "clip": {}}
    g = torch.Generator().manual_seed(0)
    for prompt in (UP, DOWN, COMPOSED):  # COMPOSED: "up" (weight 1) with "down" (weight -1)
        texts, weights = ([UP, DOWN], [1.0, -1.0]) if prompt == COMPOSED else (prompt, None)
        model = sac_sds.SDSReward.from_pretrained(
            args.sds_model, texts, sds_args.negative_prompt, align_scale=sds_args.align_scale,
            recon_scale=sds_args.recon_scale, resolution=sds_args.resolution, weights=weights)
        latents = model.encode(frames)
        if prompt == UP and args.levels:
            results["levels"] = noise_levels(args, model, latents, upright)
        low, high = sds_args.noise_level_base, sds_args.noise_level_base + sds_args.noise_level_range
        terms = {"align": [], "recon": [], "reward": []}
        for _ in range(args.noise_draws):
            t = torch.randint(low, high, (len(latents),), generator=g)
            noise = torch.randn((len(latents), *model.latent_shape), generator=g)
            align, recon = model.terms(latents, t, noise)
            for k, v in zip(terms, (align, recon, model.combine(align, recon))):
                terms[k].append(v.numpy())
        row = {}
        for k, draws in terms.items():
            draws = np.stack(draws)
            row[k] = float(np.mean([spearman(d, upright) for d in draws]))
            row[f"{k}_mean_of_{args.noise_draws}"] = spearman(draws.mean(0), upright)
        row["reward_up_minus_down_frames"] = float(
            np.mean(np.stack(terms["reward"])[:, upright > 0.9]) - np.mean(np.stack(terms["reward"])[:, upright < -0.9]))
        row["reward_std"] = float(np.stack(terms["reward"]).std(1).mean())  # its spread over frames, per draw
        results["sds"][prompt] = row
        if prompt == COMPOSED:
            continue
        clip = sac_clip.CLIPReward.from_pretrained(args.clip_model, [prompt])
        r = clip(frames).numpy()
        results["clip"][prompt] = {"reward": spearman(r, upright),
                                   "reward_up_minus_down_frames": float(r[upright > 0.9].mean() - r[upright < -0.9].mean())}

    settings = (f"t in [{sds_args.noise_level_base}, {sds_args.noise_level_base + sds_args.noise_level_range}), "
                f"align_scale {sds_args.align_scale}, recon_scale {sds_args.recon_scale}")
    lines = [f"Spearman correlation with cos(angle) (1 = ranks frames exactly by uprightness) on {args.frames} "
             f"held-out frames; SDS: {settings}",
             "", "| model | prompt | term | one noise draw | mean of draws | up frames - down frames | reward std "
                 "over frames |",
             "|---|---|---|---|---|---|---|"]
    for prompt, row in results["sds"].items():
        for k in ("align", "recon", "reward"):
            gap = f"{row['reward_up_minus_down_frames']:+.3f} | {row['reward_std']:.3f}" if k == "reward" else " |"
            lines.append(f"| {args.sds_model} | {prompt} | {k} | {row[k]:+.2f} | "
                         f"{row[f'{k}_mean_of_{args.noise_draws}']:+.2f} | {gap} |")
    for prompt, row in results["clip"].items():
        lines.append(f"| {args.clip_model} | {prompt} | reward | {row['reward']:+.2f} | (deterministic) | "
                     f"{row['reward_up_minus_down_frames']:+.3f} | |")
    if args.levels:
        lines += ["", f"{args.sds_model}, \"{UP}\", one noise draw per frame, paper's scales (2000, 200): Spearman "
                      "with cos(angle), and the mean of each term", "",
                  "| t | align | recon | symlog(2000 align) + symlog(200 recon) | mean align | mean recon |",
                  "|---|---|---|---|---|---|"]
        for row in results["levels"]:
            lines.append(f"| [{row['t'][0]}, {row['t'][1]}) | {row['align']:+.2f} | {row['recon']:+.2f} | "
                         f"{row['reward']:+.2f} | {row['mean_align']:.2e} | {row['mean_recon']:+.2e} |")
    results["table"] = "\n".join(lines)
    return results


def noise_levels(args: Args, model, latents: torch.Tensor, upright: np.ndarray) -> list[dict]:
    """Per noise level L (t in [L, L + 100)): single-draw Spearman of each term of `model` (for "pointing up") with
    cos(angle), of the reward with the paper's scales, and the terms' means (their size, which the scales inside
    the symlogs act on)."""
    import sac_sds

    paper = sac_sds.TADPOLE_DEFAULTS
    g, rows = torch.Generator().manual_seed(1), []
    for low in args.levels:
        t = torch.randint(low, low + 100, (len(latents),), generator=g)
        align, recon = model.terms(latents, t, torch.randn((len(latents), *model.latent_shape), generator=g))
        reward = sac_sds.symlog(paper["align_scale"] * align) + sac_sds.symlog(paper["recon_scale"] * recon)
        rows.append({"t": [low, low + 100], **{k: spearman(v.numpy(), upright) for k, v in
                                               (("align", align), ("recon", recon), ("reward", reward))},
                     "mean_align": float(align.mean()), "mean_recon": float(recon.mean())})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# motion-ranking
# ----------------------------------------------------------------------------------------------------------------
def motion_rewards() -> tuple:
    """The motion world's video reward and its image control, each with the prompts [CW, CCW, REST]."""
    import sac_sds

    model, adapter = str(ROOT / MOTION_MODEL), str(ROOT / MOTION_ADAPTER)
    return (sac_sds.SDSReward.from_pretrained(model, [CW, CCW, REST], motion_adapter_id=adapter),
            sac_sds.SDSReward.from_pretrained(model, [CW, CCW, REST]))


def encode_clips(reward, x: torch.Tensor) -> torch.Tensor:
    """Clips of pixels (N, frames, 3, H, W) in [-1, 1] -> their latents (N, frames, C, h, w)."""
    with torch.no_grad():
        return reward.family.encode(x.flatten(0, 1)).view(*x.shape[:2], *reward.latent_shape)


def motion_ranking(args: Args) -> dict:
    """For each held-out spinning clip, the mean over its frames of reward("clockwise") - reward("counterclockwise"),
    both from the same noise and noise level (drawn per clip from the model's settings, as SAC draws them per
    episode), scored by SDSReward.forward over the clip's consecutive frames exactly as SAC's labeler scores an
    episode (video: windows of every k-th frame). Accuracy: the fraction of clips where it has the sign of -omega
    (clockwise on screen is omega < 0), for one noise draw and for the mean of --noise-draws."""
    import sac_sds
    from train_motion_models import held_out_spins

    model, adapter = str(ROOT / MOTION_MODEL), str(ROOT / MOTION_ADAPTER)
    video, image = motion_rewards()
    settings = {"video": sac_sds.tadpole_defaults(model, adapter)[0], "image": sac_sds.tadpole_defaults(model)[0]}
    # the stride sac_sds.py gives the video model on Pendulum-v1 (the adapter's video_fps) serves the fixed-stride rows
    stride, dt = sac_sds.video_frame_stride(sac_sds.Args(env_id="Pendulum-v1", video_fps=settings["video"]["video_fps"]))
    spins = held_out_spins(args.clips, args.clip_steps, 1, video.resolution)
    rests = held_out_spins(args.clips // 2, args.clip_steps, 1, video.resolution, kinds=("rest",), seed=54321)
    frames = spins["frames"].shape[1]
    latents = {"direction": encode_clips(video, spins["frames"]),
               "speed": torch.cat([encode_clips(video, spins["frames"][: args.clips // 2]),
                                   encode_clips(video, rests["frames"])])}
    # the sign each difference should have: direction, reward(cw) - reward(ccw) > 0 on clockwise clips; speed,
    # reward(cw) - reward(at rest) > 0 on spinning clips
    truth = {"direction": (spins["omega"].mean(1) < 0).numpy(),
             "speed": np.arange(len(latents["speed"])) < args.clips // 2}
    pairs = {"direction": (0, 1), "speed": (0, 2)}
    g = torch.Generator().manual_seed(0)
    n = len(latents["direction"])
    draws = [(torch.rand(n, generator=g), torch.randn(latents["direction"].shape, generator=g))
             for _ in range(args.noise_draws)]

    # motion: each spinning clip against the same clip frozen (its first frame held still): the same frames for an
    # image model, a spin only for a video model; reward(clockwise) of the spin minus that of the frozen clip
    # order: each spinning clip against its own frames in a random order (a set of frames alike for an image model)
    perm = torch.stack([torch.randperm(latents["direction"].shape[1], generator=g) for _ in range(n)])
    contrast = {"motion": latents["direction"][:, :1].expand_as(latents["direction"]),
                "order": latents["direction"][torch.arange(n)[:, None], perm]}
    truth["motion"] = truth["order"] = np.ones(n, dtype=bool)

    def accuracy(model, stride: int, low: int, width: int, what: str = "direction") -> dict:
        model.frame_stride = stride
        z, right_sign = latents["direction" if what in contrast else what], truth[what]
        diff = np.zeros((len(draws), len(z)))
        for d, (u, noise) in enumerate(draws):
            t = low + (u * width).long()  # one level per clip and draw, uniform in [low, low + width)
            for i in range(len(z)):
                if what in contrast:
                    a, b = (model(x, int(t[i]), noise[i], prompt=0).mean() for x in (z[i], contrast[what][i]))
                else:
                    a, b = (model(z[i], int(t[i]), noise[i], prompt=k).mean() for k in pairs[what])
                diff[d, i] = float(a - b)
        right = (diff > 0) == right_sign
        return {"one_draw": float(right.mean()), "mean_of_draws": float(((diff.mean(0) > 0) == right_sign).mean()),
                "diff_pos": float(diff[:, right_sign].mean()),
                "diff_neg": float(diff[:, ~right_sign].mean()) if (~right_sign).any() else float("nan")}

    rows = []
    for what in args.known_answers:
        for name, model, strides in (("video", video, args.frame_strides if what == "direction" else (stride,)),
                                     ("image", image, (1,))):
            s = settings[name]
            for k in strides:
                rows.append({"what": what, "model": name, "frame_stride": k,
                             "t": [s["noise_level_base"], s["noise_level_base"] + s["noise_level_range"]],
                             **accuracy(model, k, s["noise_level_base"], s["noise_level_range"], what)})
                print(f"  {what}, {name}, frame stride {k}: {rows[-1]['one_draw']:.2f}", flush=True)
    levels = []
    for low in args.levels:
        levels.append({"t": [low, low + 100], "video": accuracy(video, stride, low, 100)["one_draw"],
                       "image": accuracy(image, 1, low, 100)["one_draw"]})
    s = settings["video"]
    lines = [f"Held-out clips of {frames} consecutive Pendulum-v1 steps. direction: {n} spinning clips "
             f"({int(truth['direction'].sum())} clockwise), the fraction where reward(clockwise) - "
             f"reward(counterclockwise), each the mean over the clip's frames, has the sign of -omega. speed: "
             f"{args.clips // 2} of those spinning clips and {args.clips // 2} at rest, the fraction where "
             f"reward(clockwise) - reward(at rest) is > 0 on spinning clips and < 0 at rest. motion: the fraction of "
             f"spinning clips whose reward(clockwise) exceeds that of the same clip frozen at its first frame (the "
             f"same kind of frames for an image model); order: the same against the clip's frames shuffled. 0.5 = "
             f"chance; one noise draw per clip, and the sign of the mean over {args.noise_draws} draws",
             "", "| known answer | model | window | t | one noise draw | mean of draws | mean difference, clips "
                 "where > 0 is right | where < 0 is right |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        window = (f"{s['context_size']} frames, every {r['frame_stride']} env steps "
                  f"({s['context_size'] * r['frame_stride'] * dt:.1f} s)" if r["model"] == "video" else "single frames")
        lines.append(f"| {r['what']} | {r['model']} | {window} | [{r['t'][0]}, {r['t'][1]}) | {r['one_draw']:.2f} | "
                     f"{r['mean_of_draws']:.2f} | {r['diff_pos']:+.3f} | {r['diff_neg']:+.3f} |")
    if levels:
        lines += ["", f"Direction, one noise draw per clip, t in [L, L + 100) (video: frame stride {stride})", "",
                  "| t | video | image |", "|---|---|---|"]
        lines += [f"| [{r['t'][0]}, {r['t'][1]}) | {r['video']:.2f} | {r['image']:.2f} |" for r in levels]
    return {"clips": n, "clip_steps": frames, "noise_draws": args.noise_draws, "rows": rows, "levels": levels,
            "table": "\n".join(lines)}


def caption_use(args: Args) -> dict:
    """Whether the motion world's models use the caption at all: on --clips held-out spinning clips (8 frames, every
    2nd env step, as the video model was trained and as sac_sds.py windows Pendulum-v1), at each noise level (--levels,
    default 300, 500, 700, 850), the mean squared difference between the noise predictions under two captions, from
    the same noisy clip, against the prediction's own error. A reward can only tell two captions apart by as much as
    their predictions differ. Also, how far apart the text encoders put the two spin captions, before (pendulum-sd,
    the start) and after training (pendulum-motion)."""
    from train_motion_models import FRAME_GAP, caption_gap, held_out_spins

    rewards = dict(zip(("video", "image"), motion_rewards()))
    spins = held_out_spins(args.clips, 8, FRAME_GAP, rewards["video"].resolution)
    n, frames = spins["frames"].shape[:2]
    z = encode_clips(rewards["video"], spins["frames"])
    g = torch.Generator().manual_seed(0)
    rows = []
    for t in args.levels or (300, 500, 700, 850):
        noise = torch.randn(z.shape, generator=g)
        for name, reward in rewards.items():
            zz, eps = (z, noise) if reward.video else (z.flatten(0, 1), noise.flatten(0, 1))
            tt = torch.full((len(zz),), t)
            with torch.no_grad():  # conditioning rows: 0 no caption, then clockwise, counterclockwise, at rest
                z_t = reward.family.noised(zz, eps, tt)
                pred = [reward.family.epsilon(z_t, tt, torch.full((len(zz),), row)) for row in range(4)]
            msd = lambda a, b: float((pred[a] - pred[b]).pow(2).mean())  # noqa: E731
            rows.append({"t": t, "model": name, "error": float((pred[1] - eps).pow(2).mean()),
                         "cw_ccw": msd(1, 2), "cw_rest": msd(1, 3), "cw_unconditional": msd(1, 0)})
            print(f"  t {t}, {name}: cw-ccw {rows[-1]['cw_ccw']:.1e}, cw-rest {rows[-1]['cw_rest']:.1e}", flush=True)
    from transformers import CLIPTextModel, CLIPTokenizer

    gaps = {folder: caption_gap(CLIPTextModel.from_pretrained(ROOT / folder / "text_encoder"),
                                CLIPTokenizer.from_pretrained(ROOT / folder / "tokenizer"))
            for folder in (SDS_MODEL, MOTION_MODEL)}
    lines = [f"{n} held-out spinning clips of {frames} frames (every {FRAME_GAP} env steps); mean squared difference "
             "of the noise predictions under two captions, from the same noisy clip (the prediction's own error "
             "under \"clockwise\" for scale)", "",
             "| t | model | prediction error | clockwise vs counterclockwise | clockwise vs at rest | clockwise vs "
             "no caption |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['t']} | {r['model']} | {r['error']:.1e} | {r['cw_ccw']:.1e} | {r['cw_rest']:.1e} | "
              f"{r['cw_unconditional']:.1e} |" for r in rows]
    lines += ["", "|e(clockwise) - e(counterclockwise)| / |e(clockwise)|, the text encoder's hidden states: " +
              ", ".join(f"{k} {v:.3f}" for k, v in gaps.items())]
    return {"rows": rows, "caption_gap": gaps, "table": "\n".join(lines)}


# ----------------------------------------------------------------------------------------------------------------
# rl
# ----------------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------------
# motion customisation (customize_motion.py)
# ----------------------------------------------------------------------------------------------------------------
def demo_clips(args: Args) -> dict:
    """{out}/demos: --demo-clips clips of --demo-kind (8 frames, every 2nd env step, as the motion world's training
    clips); {out}/regularization: 3 times as many of the other kinds, with their captions (captions.json)."""
    from train_motion_models import FRAME_GAP, save_clips

    out, resolution = Path(args.out), 32
    rng = np.random.default_rng(777)  # unlike the trainer's and the held-out clips' seeds
    others = [k for k in ("cw", "ccw", "swing", "rest") if k != args.demo_kind]
    save_clips(out / "demos", [args.demo_kind] * args.demo_clips, 8, FRAME_GAP, resolution, rng)
    regular = [others[i % len(others)] for i in range(3 * args.demo_clips)]
    save_clips(out / "regularization", regular, 8, FRAME_GAP, resolution, rng, caption=True)
    table = (f"{args.demo_clips} {args.demo_kind} clips in {out / 'demos'}; {len(regular)} regularisation clips "
             f"({', '.join(others)}) with captions in {out / 'regularization'}")
    return {"demos": args.demo_clips, "regularization": len(regular), "table": table}


def reward_clips(args: Args) -> dict:
    """eval_reward.py's motion-world behaviours, as clip folders of png frames at the models' 32 px ({out}/spinning,
    {out}/frozen, {out}/resting): --clips // 2 held-out spinning clips (half clockwise) of --clip-steps consecutive env
    steps, the same clips frozen at their first frame, and as many clips of a pole at rest; and the spinning clips
    again by direction ({out}/clockwise, {out}/counterclockwise: copies)."""
    import shutil

    import imageio.v2 as imageio

    from train_motion_models import save_clips

    out, n = Path(args.out), max(1, args.clips // 2)
    save_clips(out / "spinning", (["cw", "ccw"] * n)[:n], args.clip_steps, 1, 32, np.random.default_rng(12345))
    save_clips(out / "resting", ["rest"] * n, args.clip_steps, 1, 32, np.random.default_rng(54321))
    for clip in sorted((out / "spinning").iterdir()):
        first = imageio.imread(clip / "000.png")
        (out / "frozen" / clip.name).mkdir(parents=True, exist_ok=True)
        for f in range(args.clip_steps):
            imageio.imwrite(out / "frozen" / clip.name / f"{f:03d}.png", first)
        direction = "clockwise" if int(clip.name[4:]) % 2 == 0 else "counterclockwise"  # (cw, ccw, cw, ...)
        shutil.copytree(clip, out / direction / clip.name, dirs_exist_ok=True)
    return {"clips": n, "table": f"{n} clips each of {args.clip_steps} frames in {out}/spinning, frozen, resting"}


# The 2x2 (docs/pendulum-world.md#the-2x2-time-against-the-training-objective): eval_reward.py's reward names of
# its cells, (objective, time) -> "kind spec"; and the context-frames model as a fifth row
CONTEXT_MODEL, CONTEXT_ADAPTER = "demo/pendulum-motion-context", "demo/pendulum-motion-context-adapter"
TWO_BY_TWO = {
    ("denoising", "one frame"): f"sds {MOTION_MODEL}",
    ("denoising", "a window"): f"sds {MOTION_MODEL} --motion-adapter-id {MOTION_ADAPTER}",
    ("contrastive", "one frame"): "clip demo/pendulum-frame-clip",
    ("contrastive", "a window"): "clip demo/pendulum-video-clip",
    ("denoising", "a window, its first frame clean"): f"sds {CONTEXT_MODEL} --motion-adapter-id {CONTEXT_ADAPTER}",
}


def two_by_two(args: Args) -> dict:
    """The 2x2 table from an eval_reward.py run (--eval-dir) over the reward-clips folders (spinning, frozen, resting,
    clockwise, counterclockwise) with the four cells' rewards (TWO_BY_TWO) and the prompts "... clockwise",
    "... counterclockwise" and "a pendulum at rest": per cell the AUCs (95% bootstrap intervals) of spinning > frozen
    and spinning > resting under "clockwise", clockwise > counterclockwise clips under "clockwise" and under
    "counterclockwise" (there 1 - AUC: counterclockwise clips first), and caption use: on each spinning clip, how far
    the reward moves between the two direction captions, mean |r(cw) - r(ccw)|, beside how far it moves between
    "clockwise" and "at rest" on the same clips, and beside the spread of r(cw) between spinning clips (std)."""
    import csv

    rows, by_clip = {}, {}
    for folder in map(Path, args.eval_dir):
        summary = json.loads((folder / "summary.json").read_text())
        rows.update({(r["reward"], r["prompt"]): r for r in summary["rows"]})
        with open(folder / "episodes.csv") as f:
            for e in csv.DictReader(f):
                if e["behaviour"] == "clips:spinning":
                    by_clip.setdefault(e["clip"], {}).update(e)
    spins = [by_clip[c] for c in sorted(by_clip)]

    def auc(reward, prompt, pair, flip=False):
        r = rows[(reward, prompt)]
        a, (lo, hi) = r["auc"][pair], r["auc_ci"][pair]
        return (1 - a, 1 - hi, 1 - lo) if flip else (a, lo, hi)

    out, lines = [], ["| objective | time | spin > frozen | spin > resting | cw > ccw clips (\"clockwise\") | "
                      "ccw > cw clips (\"counterclockwise\") | caption use: \\|r(cw) - r(ccw)\\| / \\|r(cw) - r(rest)\\| "
                      "(r(cw) spread) |", "|---|---|---|---|---|---|---|"]
    for (objective, time_), reward in TWO_BY_TWO.items():
        if (reward, CW) not in rows:
            continue
        cell = {"objective": objective, "time": time_, "reward": reward,
                "spin_frozen": auc(reward, CW, "clips:spinning > clips:frozen"),
                "spin_rest": auc(reward, CW, "clips:spinning > clips:resting"),
                "cw_ccw": auc(reward, CW, "clips:clockwise > clips:counterclockwise"),
                "ccw_cw": auc(reward, CCW, "clips:clockwise > clips:counterclockwise", flip=True)}
        value = {p: np.array([float(e[f"{reward} | {p} | mean"]) for e in spins]) for p in (CW, CCW, REST)}
        cell["direction_gap"] = float(np.abs(value[CW] - value[CCW]).mean())
        cell["rest_gap"] = float(np.abs(value[CW] - value[REST]).mean())
        cell["spread"] = float(value[CW].std())
        out.append(cell)
        ci = lambda v: f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"  # noqa: E731
        lines.append(f"| {objective} | {time_} | {ci(cell['spin_frozen'])} | {ci(cell['spin_rest'])} | "
                     f"{ci(cell['cw_ccw'])} | {ci(cell['ccw_cw'])} | {cell['direction_gap']:.1e} / "
                     f"{cell['rest_gap']:.1e} ({cell['spread']:.1e}) |")
    return {"cells": out, "clips": len(spins), "table": "\n".join(lines)}


def random_weights(model_id: str, out: Path, seed: int = 0) -> Path:
    """A copy of a model folder (a diffusers pipeline, a diffusers model such as a MotionAdapter, or a transformers
    CLIP checkpoint) whose every network is re-initialised from its config with random weights (seeded); tokenizers,
    schedulers, image processors and tadpole_config.json are copied as they are."""
    import importlib
    import shutil

    src, out = Path(model_id), Path(out)
    shutil.copytree(src, out, dirs_exist_ok=True)
    torch.manual_seed(seed)

    def renew(folder: Path, library: str, name: str) -> None:
        cls = getattr(importlib.import_module(library), name)
        if library == "diffusers" and hasattr(cls, "load_config") and not name.endswith("Scheduler"):
            model = cls.from_config(cls.load_config(src / folder))
        elif library == "transformers" and hasattr(cls, "config_class") and hasattr(cls, "save_pretrained"):
            model = cls(cls.config_class.from_pretrained(src / folder))
        else:
            return  # a tokenizer, scheduler or processor: kept
        for weights in (out / folder).glob("*.safetensors"):
            weights.unlink()
        model.save_pretrained(out / folder)

    index = src / "model_index.json"
    if index.is_file():  # a pipeline: each component
        for folder, spec in json.loads(index.read_text()).items():
            if not folder.startswith("_") and isinstance(spec, list) and spec[0] in ("diffusers", "transformers"):
                renew(Path(folder), *spec)
    else:
        config = json.loads((src / "config.json").read_text())
        if "_class_name" in config:  # a diffusers model
            renew(Path("."), "diffusers", config["_class_name"])
        else:  # a transformers model
            renew(Path("."), "transformers", config["architectures"][0])
    return out


def random_models(args: Args) -> dict:
    """{out}/random-{name}: the Pendulum world's models (pendulum-sd, pendulum-sd3, pendulum-clip, pendulum-motion and
    its adapter) with random weights, for eval_reward.py's "random weights correlate near zero" known answer."""
    made = [str(random_weights(str(ROOT / "demo" / name), Path(args.out) / f"random-{name}"))
            for name in ("pendulum-sd", "pendulum-sd3", "pendulum-clip", "pendulum-motion", "pendulum-motion-adapter")]
    return {"folders": made, "table": "\n".join(made)}


def custom_ranking(args: Args) -> dict:
    """Held-out clips (8 frames, every 2nd env step) of the taught motion against the other kinds: the AUC (the
    fraction of (taught, other) pairs whose score is ordered so) of each reward's mean over the clip's frames, for the
    customised video model under the token's phrase, the same untaught (the token then means nothing), the video
    model under the motion's word, and the image control customised on the same frames. One noise level and noise
    per clip and draw, from each model's settings; one draw, and the mean of --noise-draws."""
    import sac_sds
    from train_motion_models import CAPTIONS, FRAME_GAP, KINDS, held_out_spins

    model, adapter = str(ROOT / MOTION_MODEL), str(ROOT / MOTION_ADAPTER)
    phrase = json.loads((ROOT / args.custom_video / "tadpole_config.json").read_text())["phrase"]
    word = CAPTIONS[KINDS[args.demo_kind]]
    taught = {"swing": ("swing",), "cw": ("cw",), "ccw": ("ccw",)}[args.demo_kind]
    others = {"swing": ("cw", "ccw", "rest"), "cw": ("ccw",), "ccw": ("cw",)}[args.demo_kind]
    n = args.clips
    pos = held_out_spins(n, 8, FRAME_GAP, 32, kinds=taught, seed=12345)
    neg = held_out_spins(n, 8, FRAME_GAP, 32, kinds=others, seed=54321)
    scorers = [("video, customised", phrase, dict(motion_adapter_id=adapter, customization=str(ROOT / args.custom_video))),
               ("video, not customised", phrase, dict(motion_adapter_id=adapter)),
               (f"video, the word ({word})", word, dict(motion_adapter_id=adapter))]
    if args.custom_image:
        scorers.append(("image control, customised", phrase, dict(customization=str(ROOT / args.custom_image))))
    rows = []
    for name, text, options in scorers:
        reward = sac_sds.SDSReward.from_pretrained(model, [text], **options)
        settings = sac_sds.tadpole_defaults(model, options.get("motion_adapter_id"), options.get("customization"))[0]
        low, width = settings["noise_level_base"], settings["noise_level_range"]
        if reward.video:
            reward.frame_stride = 1  # the clips hold every 2nd env step already
        taught_z = encode_clips(reward, pos["frames"])
        g = torch.Generator().manual_seed(0)
        perm = torch.stack([torch.randperm(8, generator=g) for _ in range(n)])
        # the others; and each taught clip frozen at its first frame, or its frames shuffled: the same frames, so
        # that only a model that sees the motion can tell them from the clip
        z = torch.cat([taught_z, encode_clips(reward, neg["frames"]), taught_z[:, :1].expand_as(taught_z),
                       taught_z[torch.arange(n)[:, None], perm]])
        scores = np.zeros((args.noise_draws, len(z)))
        for d in range(args.noise_draws):
            t = (low + (torch.rand(n, generator=g) * width).long()).repeat(4)  # a clip and its contrasts alike
            noise = torch.randn(taught_z.shape, generator=g).repeat(4, 1, 1, 1, 1)
            for i in range(len(z)):
                scores[d, i] = float(reward(z[i], int(t[i]), noise[i]).mean())

        def answers(s):
            taught_s = s[:n]
            return {"others": float((taught_s[:, None] > s[None, n:2 * n]).mean()),  # AUC over all pairs
                    "frozen": float((taught_s > s[2 * n:3 * n]).mean()), "shuffled": float((taught_s > s[3 * n:]).mean())}

        rows.append({"reward": name, "prompt": text, "t": [low, low + width], "one_draw": answers(scores[0]),
                     "mean_of_draws": answers(scores.mean(0))})
        print(f"  {name}: {rows[-1]['one_draw']}", flush=True)
    lines = [f"{n} held-out {'/'.join(taught)} clips (8 frames, every 2nd env step), scored by the mean reward over "
             f"their frames: against {n} {'/'.join(others)} clips (AUC over all pairs), against each clip frozen at its "
             f"first frame and against its frames shuffled (the fraction of clips scored above their contrast; the "
             f"same noise and level for both). 0.5 = chance; one noise draw, and the mean of {args.noise_draws}", "",
             "| reward | prompt | t | against the others | against itself frozen | against itself shuffled |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['reward']} | {r['prompt']} | [{r['t'][0]}, {r['t'][1]}) | "
              + " | ".join(f"{r['one_draw'][k]:.2f} / {r['mean_of_draws'][k]:.2f}" for k in ("others", "frozen", "shuffled"))
              + " |" for r in rows]
    return {"rows": rows, "table": "\n".join(lines)}


def run_command(args: Args, config: str, seed: int) -> tuple[list[str], Path]:
    script, flags = CONFIGS[config]
    name = f"{Path(args.out).name}__{config}__s{seed}"  # a run name is one folder under runs/
    cmd = [sys.executable, str(ROOT / script), "--env-id", "Pendulum-v1", "--seed", str(seed), "--total-timesteps",
           str(args.steps), "--learning-starts", str(args.learning_starts), "--eval-every", "0", "--eval-episodes",
           "1", "--checkpoint-every", "0", "--threads", "1", "--no-progress", "--run-name", name, *flags,
           *shlex.split(args.extra)]
    return cmd, ROOT / "runs" / name


def train_all(args: Args) -> dict[tuple[str, int], Path]:
    todo, runs = [], {}
    for config in args.configs:
        if config == "random":
            continue
        if config not in CONFIGS:
            sys.exit(f"error: unknown config '{config}'; choose from random, {', '.join(CONFIGS)}")
        for seed in args.seeds:
            cmd, run_dir = run_command(args, config, seed)
            runs[config, seed] = run_dir
            if not (run_dir / "summary.json").exists():
                todo.append((cmd, run_dir))

    def train(job):
        cmd, run_dir = job
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "checkpoint.pt").exists():  # an interrupted run: continue it
            cmd = [*cmd[:2], "--resume", str(run_dir)]
        start = time.time()
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"  {run_dir.name}: exit {code} after {(time.time() - start) / 60:.1f} min", flush=True)
        return code

    if todo:
        print(f"training {len(todo)} runs, {args.jobs} at a time", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(train, todo))
        failed = [str(run_dir) for (_, run_dir), code in zip(todo, codes) if code != 0]
        if failed:
            sys.exit(f"error: runs failed (see their .log beside them): {', '.join(failed)}")
    return runs


def rollout(policy, run_args: dict, episodes: int) -> dict:
    """Deterministic episodes with start states from seeds 10_000.. ; per step the pole angle from the observation
    (cos, sin, angular velocity). policy: obs -> action, or None for uniform random actions."""
    import sac_env_reward as core

    known = {f.name for f in dataclasses.fields(core.SACArgs)}
    env = core.make_env(core.SACArgs(**{k: v for k, v in run_args.items() if k in known}))
    env.action_space.seed(0)
    returns, angles, omegas = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=10_000 + ep)
        done, ret, ep_angles, ep_omegas = False, 0.0, [], []
        while not done:
            if policy is None:
                action = env.action_space.sample()
            else:
                with torch.no_grad():
                    action = policy(torch.as_tensor(obs)[None])[0].numpy()
            obs, r, terminated, truncated, _ = env.step(action)
            ret += r
            ep_angles.append(abs(math.atan2(obs[1], obs[0])))
            ep_omegas.append(float(obs[2]))
            done = terminated or truncated
        returns.append(ret)
        angles.append(ep_angles)
        omegas.append(ep_omegas)
    a = np.degrees(np.array(angles))  # (episodes, 200)
    w = np.array(omegas)  # signed angular velocity: > 0 counterclockwise on screen, < 0 clockwise
    # in a swing: moving (|omega| >= 1 rad/s), and within the 16 steps around, never within 17 degrees of the top
    # (the motion world's swing clips: 8 frames every 2nd step, never that close to the top)
    near_top = a < np.degrees(0.3)
    padded = np.pad(near_top, ((0, 0), (8, 8)))
    around = np.stack([padded[:, k:k + near_top.shape[1]] for k in range(17)]).any(0)
    swinging = (np.abs(w) >= 1.0) & ~around
    half = a.shape[1] // 2
    return {"return": float(np.mean(returns)), "angle": float(a.mean()), "angle_first_half": float(a[:, :half].mean()),
            "angle_second_half": float(a[:, half:].mean()), "upright": float((a < 30).mean()),
            "omega": float(w.mean()), "speed": float(np.abs(w).mean()), "omega_first_half": float(w[:, :half].mean()),
            "omega_second_half": float(w[:, half:].mean()), "clockwise": float((w < 0).mean()),
            "clockwise_first_half": float((w[:, :half] < 0).mean()),
            "clockwise_second_half": float((w[:, half:] < 0).mean()),
            "swinging": float(swinging.mean()),
            "angle_by_step": a.mean(0).tolist(), "omega_by_step": w.mean(0).tolist()}


def rl(args: Args) -> dict:
    import sac_env_reward as core

    runs = train_all(args)
    per_seed: dict[str, list[dict]] = {}
    trained_steps = set()
    for config in args.configs:
        if config == "random":
            per_seed[config] = [rollout(None, {"env_id": "Pendulum-v1"}, args.eval_episodes)]
            continue
        for seed in args.seeds:
            actor, run_args = core.load_actor(runs[config, seed])
            trained_steps.add(run_args["total_timesteps"])
            per_seed.setdefault(config, []).append(rollout(actor.act, run_args, args.eval_episodes))
    if args.table == "motion":
        metrics = ["return", "speed", "omega", "clockwise", "omega_first_half", "clockwise_first_half",
                   "omega_second_half", "clockwise_second_half"]
        heads = ["env return", "mean abs omega (rad/s)", "mean signed omega", "steps turning clockwise",
                 "omega, steps 0-99", "clockwise, 0-99", "omega, steps 100-199", "clockwise, 100-199"]
    elif args.table == "swing":
        metrics = ["swinging", "speed", "upright", "return"]
        heads = ["steps in a swing", "mean abs omega (rad/s)", "upright (<30 deg)", "env return"]
    else:
        metrics = ["return", "angle", "angle_first_half", "angle_second_half", "upright"]
        heads = ["env return", "mean abs angle (deg)", "angle, steps 0-99", "angle, steps 100-199",
                 "upright (<30 deg)"]
    steps = "/".join(str(n) for n in sorted(trained_steps)) or "-"
    lines = [f"Pendulum-v1, {steps} steps per run, seeds {list(args.seeds)}, {args.eval_episodes} deterministic "
             "evaluation episodes per actor (random policy: the same episodes); mean +- std over seeds",
             "", "| config | command flags | " + " | ".join(heads) + " |", "|---" * (2 + len(heads)) + "|"]
    summary = {}
    for config, rows in per_seed.items():
        summary[config] = {m: [r[m] for r in rows] for m in rows[0]}
        flags = "uniform random actions" if config == "random" else \
            f"{CONFIGS[config][0]} " + " ".join(f'"{f}"' if " " in f else f for f in CONFIGS[config][1])
        cells = [f"{np.mean(summary[config][m]):.2f} +- {np.std(summary[config][m]):.2f}"
                 if m in ("upright", "swinging") or m.startswith(("clockwise", "omega", "speed")) else
                 f"{np.mean(summary[config][m]):.1f} +- {np.std(summary[config][m]):.1f}" for m in metrics]
        lines.append(f"| {config} | {flags} | " + " | ".join(cells) + " |")
    plot_angles(per_seed, Path(args.out) / "angles.png", args)
    plot_angles(per_seed, Path(args.out) / "omega.png", args, key="omega_by_step")
    return {"steps": sorted(trained_steps), "seeds": list(args.seeds), "per_seed": summary, "table": "\n".join(lines)}


def plot_angles(per_seed: dict[str, list[dict]], path: Path, args: Args, key: str = "angle_by_step") -> None:
    """Mean absolute pole angle (key "omega_by_step": mean signed angular velocity) at each step of the evaluation
    episodes, one line per configuration (mean over seeds, band: min to max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for config, rows in per_seed.items():
        curves = np.array([r[key] for r in rows])
        (line,) = ax.plot(curves.mean(0), label=config, lw=1.5)
        if len(curves) > 1:
            ax.fill_between(np.arange(curves.shape[1]), curves.min(0), curves.max(0), color=line.get_color(), alpha=0.12)
    ax.axvline(100, color="grey", ls=":", lw=1)
    if key == "omega_by_step":
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(ylabel="mean signed omega (rad/s; < 0: clockwise)", ylim=(-8, 8))
    else:
        ax.set(ylabel="mean |pole angle| (deg; 0 = up, 180 = down)", ylim=(0, 180))
    ax.set(xlabel="step of the episode", title=f"Pendulum world: seeds {list(args.seeds)}, "
                 f"{args.eval_episodes} evaluation episodes each")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"angle curves: {path}")


def main(args: Args) -> None:
    start = time.time()
    what = {"ranking": ranking, "motion-ranking": motion_ranking, "caption-use": caption_use, "rl": rl,
            "demo-clips": demo_clips, "custom-ranking": custom_ranking, "reward-clips": reward_clips,
            "random-models": random_models, "two-by-two": two_by_two}
    results = what[args.what](args)
    print(results["table"])
    print(f"\n({(time.time() - start) / 60:.1f} min)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.what}.md").write_text(results["table"] + "\n")
    (out / f"{args.what}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(tyro.cli(Args))
