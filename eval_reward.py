"""Which reward will teach? Score text rewards against the environment's own reward on a set of behaviours, before
spending GPU hours on RL.

    python eval_reward.py random runs/NAME --env-id Pendulum-v1 --sds-model-id demo/pendulum-sd \
        --clip-model-id demo/pendulum-clip --prompt "a pendulum pointing up" --prompt "a pendulum pointing down"
    python eval_reward.py random runs/NAME:6000 --action-noise 0 0.5 2 --sds-model-id demo/pendulum-sd \
        --sds-model-id "demo/pendulum-motion --motion-adapter-id demo/pendulum-motion-adapter" --prompt "..."
    python eval_reward.py clips/spinning clips/resting --env-id Pendulum-v1 \
        --sds-model-id "demo/pendulum-motion --motion-adapter-id demo/pendulum-motion-adapter" \
        --prompt "a pendulum spinning clockwise"

Behaviours (positional): `random` (uniform random actions), a run folder of sac_*.py trained with
--save-policy-every (RUN: each of its policy snapshots policies/step_N.pt; RUN:N the one of step N), or a folder of
clips (mp4 files, folders of png/jpg frames, or png/jpg frames directly: one clip), read as customize_motion.py reads
its clips. Each policy is played at every --action-noise (Gaussian noise of that many times the action range's
half-width added to its mean action, clipped), so one trained actor is itself a ladder. Every policy behaviour plays
--episodes episodes in --env-id (with --scene and --protocol), episode i seeded --seed + i for all of them (the same
starts); the env's own rewards are recorded, and every frame after a step (what training scores) is rendered.

Rewards: --sds-model-id (repeatable; the family's settings as sac_sds.py's flags after the id, e.g. "demo/pendulum-motion
--motion-adapter-id demo/pendulum-motion-adapter --noise-level-base 500") and --clip-model-id (repeatable, sac_clip.py's
flags after the id), each under every --prompt. Frames are scored by the training scripts' own labelers
(sac_sds.build_reward / sac_clip.build_reward with the same settings: one noise level per episode, the same video
windows and frame stride, frames rendered at the size training renders them), fed one episode at a time through the
SAC core's TransitionQueue as the training loop feeds them.

Reported per (reward, prompt), in --out (default eval_reward/): the Spearman rank correlation of the episodes' reward
sums with their env returns, with a bootstrap 95% interval over episodes (--bootstrap resamples); the Pearson
correlation of the per-step rewards with the env's per-step rewards; the mean reward per frame of every behaviour; the
frames/s of the reward. Clip folders have no env return: they count in the means per behaviour only.

    summary.json, summary.csv, summary.md   one row per (reward, prompt)
    episodes.csv                            one row per episode: behaviour, env return, each reward's sum and mean
    scatter.png                             episode reward sum against env return, one panel per (reward, prompt)
    correlations.png                        the correlations as bars (Spearman with its interval, Pearson per step)

Bad input (a run folder without snapshots, a run of another env than --env-id, a model that does not load, an empty
clip folder, ...) is one `error:` line naming the problem and the fix, exit status 2, and nothing written. Ctrl-C:
the episode under way is finished, the tables of the episodes scored so far are written (marked incomplete), exit
status 130; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch
import tyro

import sac_clip
import sac_sds
import sac_sds as core  # the SAC core (make_env, load_policy, label_episode): the same text in all three scripts

# One error type, core.UserError: sac_sds's, the class of the SAC core, of the SDS reward and of the text rewards'
# shared loading alike; sac_clip.py's own class (the same text, another class) is raised again as it where the CLIP
# reward is built, as eval_videos.py does.
UserError = core.UserError
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Args:
    """Score text rewards against the env's own reward on a set of behaviours (random, policy snapshots, clips)."""

    behaviours: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="BEHAVIOUR...")] = ()
    """random, run folders (RUN: all its policy snapshots; RUN:STEP: one) and folders of clips"""
    env_id: Optional[str] = None
    """the env the policies play in (default: the runs' own; required without runs); runs of another env are refused"""
    scene: Literal["stock", "natural"] = "natural"
    """what frames show (the text rewards' default, natural; docs/method.md#scenes)"""
    protocol: Literal["stock", "tadpole"] = "stock"
    """episode set-up: stock, or TADPoLe's (docs/method.md#tadpoles-protocol)"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (default: the env's own)"""
    render_size: Optional[int] = None
    """frame size (default: as training renders them: the protocol's, else each reward model's own input size)"""
    sds_model_id: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """a diffusion reward: a model id (hub id or local folder), optionally followed by sac_sds.py flags for its
    settings, e.g. "demo/pendulum-motion --motion-adapter-id demo/pendulum-motion-adapter"; repeat for several"""
    clip_model_id: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """a CLIP reward: a checkpoint id or folder, optionally followed by sac_clip.py flags (--clip-alpha,
    --baseline-prompt); repeat for several"""
    prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """the text every reward scores the frames against; repeat for several (each is its own row)"""
    episodes: int = 3
    """episodes per policy behaviour (and per noise level)"""
    action_noise: tuple[float, ...] = (0.0,)
    """Gaussian action noise std per policy, in units of the action range's half-width (0: the mean action); each
    value is its own behaviour"""
    seed: int = 100_000
    """episode i of every behaviour starts from env seed seed + i; also seeds the rewards' noise and the bootstrap"""
    bootstrap: int = 1000
    """bootstrap resamples of the episodes for the Spearman and AUC intervals"""
    out: str = "eval_reward"
    """output folder"""
    device: str = "auto"
    """device of the reward models (the policies run on the CPU): auto (cuda if available), cpu, cuda, cuda:1 ..."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """dtype of the reward models (auto: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on the CPU)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    progress: bool = True
    """show a progress bar over episodes"""


# ----- behaviours -----
@dataclass
class Behaviour:
    """A source of episodes: the random policy, one policy snapshot at one action-noise level, or a clip folder."""

    name: str
    kind: Literal["random", "policy", "clips"]
    path: str = ""
    step: Optional[int] = None
    noise: float = 0.0
    run_args: dict = dataclasses.field(default_factory=dict)
    clips: list = dataclasses.field(default_factory=list)  # (name, uint8 frames (F, H, W, 3)) of a clip folder


def snapshots(run: Path) -> dict[int, Path]:
    """step -> policies/step_{step}.pt of a run folder."""
    found = {}
    for p in (run / "policies").glob("step_*.pt"):
        m = re.fullmatch(r"step_(\d+)\.pt", p.name)
        if m:
            found[int(m[1])] = p
    return dict(sorted(found.items()))


def read_behaviours(args: Args) -> list[Behaviour]:
    """The behaviours of the command line, checked (nothing loaded into a model yet); UserError for bad ones."""
    import customize_motion  # its clip readers: mp4 files and folders of frames

    out, env_source = [], "--env-id"
    for spec in args.behaviours:
        if spec == "random":
            out.append(Behaviour("random", "random"))
            continue
        path, step = spec, None
        m = re.fullmatch(r"(.+):(\d+)", spec)
        if m and not Path(spec).exists():
            path, step = m[1], int(m[2])
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"behaviour {spec!r}: no such folder; give random, a run folder (RUN or RUN:STEP) or a "
                                 "folder of clips")
        if (folder / "args.json").is_file():  # a run folder
            try:
                run_args = json.loads((folder / "args.json").read_text())
                run_env = run_args["env_id"]
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"behaviour {spec!r}: unreadable args.json ({type(e).__name__}); is it a run folder "
                                     "written by sac_*.py?") from None
            steps = snapshots(folder)
            if not steps:
                raise UserError(f"behaviour {spec!r}: the run has no policy snapshots (policies/step_N.pt); train it "
                                     "with --save-policy-every N (e.g. 1000) to make a ladder of behaviours")
            if step is not None and step not in steps:
                raise UserError(f"behaviour {spec!r}: no snapshot of step {step}; the run has steps "
                                     f"{', '.join(map(str, steps))}")
            for s in [step] if step is not None else steps:
                for noise in args.action_noise:
                    name = f"{folder.name}:{s}" + (f"+noise{noise:g}" if noise else "")
                    out.append(Behaviour(name, "policy", str(steps[s]), s, noise, run_args))
            if args.env_id is None:
                args.env_id, env_source = run_env, f"the env of {spec!r} before it"
            elif run_env != args.env_id:
                raise UserError(f"behaviour {spec!r}: the run was trained on {run_env}, not {env_source} "
                                     f"{args.env_id}; give runs of one env (and --env-id {run_env} for them)")
            continue
        if step is not None:
            raise UserError(f"behaviour {spec!r}: {path} is not a run folder (no args.json), so it has no steps")
        clips = []
        flag = f"behaviour {spec!r}"
        try:
            for item in sorted(folder.iterdir()):
                if item.suffix.lower() in VIDEO_SUFFIXES:
                    clips.append((item.stem, customize_motion.read_video(item, flag)))
                elif item.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in item.iterdir()):
                    clips.append((item.name, customize_motion.read_frame_folder(item, flag)))
            if not clips and any(p.suffix.lower() in FRAME_SUFFIXES for p in folder.iterdir()):
                clips.append((folder.name, customize_motion.read_frame_folder(folder, flag)))  # one clip of frames
        except sac_sds.UserError as e:
            raise UserError(str(e)) from None
        clips = [(n, f) for n, f in clips if len(f)]
        if not clips:
            raise UserError(f"behaviour {spec!r}: no clips in the folder (mp4 files, or folders of png/jpg frames); "
                                 "put the clips there, or give random or a run folder")
        out.append(Behaviour(f"clips:{folder.name}", "clips", str(folder), clips=clips))
    if not out:
        raise UserError("no behaviours given; e.g. python eval_reward.py random runs/NAME --prompt \"...\" "
                             "--sds-model-id MODEL")
    names = [b.name for b in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"behaviour {repeated[0]} given twice; give each once")
    return out


def env_args(args: Args, run_args: Optional[dict] = None, render_size: Optional[int] = None) -> core.SACArgs:
    """The core's env settings for the rollouts: this command's env, scene and protocol; a run's observation layout
    (--time-feature, --action-repeat) so that its policy gets what it was trained on."""
    run_args = run_args or {}
    return core.SACArgs(env_id=args.env_id, scene=args.scene, protocol=args.protocol,
                        max_episode_steps=args.max_episode_steps or run_args.get("max_episode_steps"),
                        time_feature=bool(run_args.get("time_feature", False)),
                        action_repeat=run_args.get("action_repeat"), render_size=render_size, seed=args.seed)


# ----- rewards: one adapter per kind, the only glue to the training scripts' reward sections -----
@dataclass
class Reward:
    """One (reward, prompt) row: the training script's labeler, and what it scored."""

    kind: str  # sds / clip
    spec: str  # the model id and its flags, as given
    prompt: str
    labeler: object = None
    render_size: int = 0
    seconds: float = 0.0
    frames: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind} {self.spec}"


def script_args(args_cls: type, spec: str, flag: str, extra: list[str]) -> object:
    """A model spec ("ID [--flag value ...]") as the script's Args, with this command's env and prompt (extra);
    UserError for flags the script does not have."""
    try:
        words = shlex.split(spec)
    except ValueError as e:
        raise UserError(f"{flag} {spec!r}: cannot split it into words ({e}); check its quotes") from None
    if not words or words[0].startswith("-"):
        raise UserError(f"{flag} {spec!r}: give the model id first, then the script's flags")
    model_flag = "--model-id" if args_cls is sac_sds.Args else "--clip-model-id"
    own = [w for w in words[1:] if w.split("=")[0] in ("--prompt", "--prompt-schedule", "--env-id", model_flag)]
    if own:
        raise UserError(f"{flag} {spec!r}: {own[0]} is set by eval_reward.py ({own[0].replace('-model-id', '')} "
                             "comes from its own flags): drop it from the model's flags")
    try:
        return tyro.cli(args_cls, args=[model_flag, words[0], *words[1:], *extra], console_outputs=False)
    except SystemExit:
        script = "sac_sds.py" if args_cls is sac_sds.Args else "sac_clip.py"
        raise UserError(f"{flag} {spec!r}: flags that {script} does not take (or bad values); see python "
                             f"{script} --help for the model's settings") from None


def sds_labeler(spec: str, prompt: str, args: Args, device: torch.device):
    """sac_sds.py's labeler for one prompt, built by its own build_reward (settings from the model's
    tadpole_config.json unless the spec's flags say otherwise; the video frame stride from the env's dt)."""
    sds_args = script_args(sac_sds.Args, spec, "--sds-model-id", common_flags(args, prompt))
    return sac_sds.build_reward(sds_args, device)


def clip_labeler(spec: str, prompt: str, args: Args, device: torch.device):
    """sac_clip.py's labeler for one prompt, built by its own build_reward."""
    clip_args = script_args(sac_clip.Args, spec, "--clip-model-id", common_flags(args, prompt))
    try:
        return sac_clip.build_reward(clip_args, device)
    except sac_clip.UserError as e:  # sac_clip.py's own class: raised again as this script's one
        raise UserError(str(e)) from None


def common_flags(args: Args, prompt: str) -> list[str]:
    flags = ["--prompt", prompt, "--env-id", args.env_id, "--scene", args.scene, "--protocol", args.protocol,
             "--seed", str(args.seed), "--device", args.device]
    if args.dtype != "auto":
        flags += ["--dtype", args.dtype]
    if args.max_episode_steps:
        flags += ["--max-episode-steps", str(args.max_episode_steps)]
    return flags


LABELERS = {"sds": sds_labeler, "clip": clip_labeler}


def build_rewards(args: Args, device: torch.device) -> list[Reward]:
    """Every (reward, prompt), its labeler built (the models loaded: a model that does not load fails here, before
    anything is rolled out or written)."""
    rewards = []
    for kind, specs in (("sds", args.sds_model_id), ("clip", args.clip_model_id)):
        for spec in specs:
            for prompt in args.prompt:
                try:
                    labeler = LABELERS[kind](spec, prompt, args, device)
                except UserError as e:  # the script's message names its own flags (--model-id): say which reward
                    message = str(e)
                    if not message.startswith(f"--{kind}-model-id"):
                        message = f"--{kind}-model-id {spec!r}: {message}"
                    raise UserError(message) from None
                size = args.render_size or core.protocol_render_size(env_args(args)) or labeler.render_size
                rewards.append(Reward(kind, spec, prompt, labeler, int(size)))
    return rewards


# ----- rollouts -----
def rollout(behaviour: Behaviour, actor, envs: dict[int, object], seed: int) -> tuple[dict[int, list], list[float]]:
    """One episode of a policy behaviour (actor None: uniform random actions) in the envs (one per frame size, stepped
    in lockstep with the same actions from the same seed): the frames after each step, per size, and the env's
    rewards."""
    sizes = list(envs)
    first = envs[sizes[0]]
    obs = [env.reset(seed=seed)[0] for env in envs.values()][0]
    space = first.action_space
    space.seed(seed)
    rng = np.random.default_rng(seed)
    frames, rewards, done = {s: [] for s in sizes}, [], False
    low, high = space.low, space.high
    while not done:
        if actor is None:
            action = space.sample()
        else:
            action = actor.act(torch.as_tensor(obs).unsqueeze(0))[0].numpy()
            if behaviour.noise:
                action = np.clip(action + behaviour.noise * (high - low) / 2 * rng.standard_normal(action.shape),
                                 low, high).astype(np.float32)
        for s, env in envs.items():
            o, r, terminated, truncated, _ = env.step(action)
            frames[s].append(env.render())
            if s == sizes[0]:
                obs, done = o, terminated or truncated
                rewards.append(float(r))
    return frames, rewards


# ----- statistics (numpy only) -----
def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return (sums / counts)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(ranks(a), ranks(b))


def bootstrap_ci(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> list[float]:
    """The 2.5 and 97.5 percentiles of Spearman over n resamples of the pairs (resamples of constant ranks, which
    have no correlation, left out)."""
    if len(a) < 3 or n < 1:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = [spearman(a[idx], b[idx]) for idx in rng.integers(0, len(a), (n, len(a)))]
    values = np.array([v for v in values if np.isfinite(v)])
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def auc_of(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pairs (an episode of a, one of b) in which a's mean reward per frame is the higher (ties 1/2)."""
    a, b = np.asarray(a)[:, None], np.asarray(b)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())


def auc_ci(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> list[float]:
    """The 2.5 and 97.5 percentiles of auc_of over n bootstrap resamples, a's episodes and b's each resampled."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or n < 1:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = [auc_of(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(n)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


# ----- the whole evaluation -----
def evaluate(args: Args) -> dict:
    """Rolls out every behaviour, scores every frame with every (reward, prompt), and writes the tables and plots
    under args.out; returns the summary. UserError for bad input (before anything is written)."""
    from tqdm import tqdm

    if not args.prompt:
        raise UserError('no --prompt given: say what the rewards score, e.g. --prompt "a pendulum pointing up"')
    if not args.sds_model_id and not args.clip_model_id:
        raise UserError("no reward given: add --sds-model-id MODEL and/or --clip-model-id MODEL")
    if any(not p.strip() for p in args.prompt):
        raise UserError('an empty --prompt: describe the behaviour, e.g. --prompt "a pendulum pointing up"')
    if args.episodes < 1 or args.bootstrap < 0 or any(n < 0 for n in args.action_noise) or not args.action_noise:
        raise UserError("--episodes must be at least 1, --bootstrap and every --action-noise at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    behaviours = read_behaviours(args)
    if args.env_id is None and any(b.kind != "clips" for b in behaviours):
        raise UserError("no --env-id for the random policy: give --env-id (e.g. Pendulum-v1) or a run folder")
    if args.env_id is None:  # clips only: the env only sets the video rewards' frame stride (its dt)
        raise UserError("clip folders need --env-id: the env they were rendered from sets the video reward's "
                             "frame stride, as in training (e.g. --env-id Pendulum-v1)")
    core.make_env(env_args(args)).close()  # an env that cannot be built fails here, in one line
    device = core.resolve_device(args.device)
    rewards = build_rewards(args, device)
    actors = {}
    for b in behaviours:
        if b.kind == "policy" and b.path not in actors:
            actors[b.path] = core.load_policy(b.path)
            env = core.make_env(env_args(args, b.run_args))
            want, got = actors[b.path].net[0].in_features, env.observation_space.shape[0]
            env.close()
            if want != got:
                raise UserError(f"behaviour {b.name}: the policy takes {want} observations, {args.env_id} with "
                                     f"these settings gives {got}; give its run's settings (--max-episode-steps, ...)")

    sizes = sorted({r.render_size for r in rewards})
    total = sum(args.episodes if b.kind != "clips" else len(b.clips) for b in behaviours)
    bar = tqdm(total=total, unit="episode", disable=not args.progress, dynamic_ncols=True)
    episodes: list[dict] = []
    steps: dict[int, list] = {i: [] for i in range(len(rewards))}  # per reward: per-step rewards of episodes with env
    env_steps: list[np.ndarray] = []
    counter, stop = 0, []  # Ctrl-C: the tables of the episodes scored so far, then exit 130
    handlers = core.on_stop_signals(stop.append, "writing the tables of the episodes scored so far after this one")
    for b in behaviours:
        if stop:
            break
        bar.set_description(b.name[-40:])
        envs = {}
        if b.kind != "clips":
            envs = {s: core.make_env(env_args(args, b.run_args, s), render=True) for s in sizes}
        try:
            items = range(args.episodes) if b.kind != "clips" else range(len(b.clips))
            for i in items:
                if b.kind == "clips":
                    clip_name, clip = b.clips[i]
                    frames, env_rewards = {s: list(clip) for s in sizes}, None
                else:
                    clip_name = ""
                    frames, env_rewards = rollout(b, actors.get(b.path), envs, args.seed + i)
                row = {"behaviour": b.name, "episode": i, "clip": clip_name, "steps": len(frames[sizes[0]]),
                       "env_return": float(np.sum(env_rewards)) if env_rewards is not None else None}
                for k, r in enumerate(rewards):
                    start = time.perf_counter()
                    values = core.label_episode(r.labeler, frames[r.render_size], counter)["reward"]
                    r.seconds += time.perf_counter() - start
                    r.frames += len(values)
                    row[f"r{k}_sum"], row[f"r{k}_mean"] = float(values.sum()), float(values.mean())
                    if env_rewards is not None:
                        steps[k].append(values)
                if env_rewards is not None:
                    env_steps.append(np.asarray(env_rewards))
                episodes.append(row)
                counter += 1
                bar.update(1)
                if stop:
                    break
        finally:
            for env in envs.values():
                env.close()
    bar.close()
    for s, h in handlers.items():
        signal.signal(s, h)
    if stop:  # the behaviours scored so far (the last one perhaps in part)
        behaviours = [b for b in behaviours if any(e["behaviour"] == b.name for e in episodes)]
    summary = summarize(args, behaviours, rewards, episodes, steps, env_steps)
    if stop:
        summary["stopped"] = f"by {signal.Signals(stop[0]).name} after {len(episodes)} of {total} episodes"
    write_outputs(args, summary, rewards, episodes)
    if stop:
        raise core.stopped(stop[0], f"after {len(episodes)} of {total} episodes: their tables are in {args.out}/; "
                                    "run the command again for all")
    return summary


def summarize(args, behaviours, rewards, episodes, steps, env_steps) -> dict:
    with_env = [e for e in episodes if e["env_return"] is not None]
    returns = np.array([e["env_return"] for e in with_env])
    rows = []
    for k, r in enumerate(rewards):
        sums = np.array([e[f"r{k}_sum"] for e in with_env])
        per_step = np.concatenate(steps[k]) if steps[k] else np.zeros(0)
        env_per_step = np.concatenate(env_steps) if env_steps else np.zeros(0)
        by_behaviour, means = {}, {}
        for b in behaviours:
            mine = [e for e in episodes if e["behaviour"] == b.name]
            frames = sum(e["steps"] for e in mine)
            by_behaviour[b.name] = sum(e[f"r{k}_mean"] * e["steps"] for e in mine) / frames
            means[b.name] = np.array([e[f"r{k}_mean"] for e in mine])
        order = [b.name for b in behaviours]
        auc = {f"{a} > {b}": auc_of(means[a], means[b]) for i, a in enumerate(order) for b in order[i + 1:]}
        ci = {f"{a} > {b}": auc_ci(means[a], means[b], args.bootstrap, args.seed)
              for i, a in enumerate(order) for b in order[i + 1:]}
        rows.append({
            "reward": r.name, "prompt": r.prompt, "spearman": spearman(sums, returns) if len(sums) > 1 else float("nan"),
            "spearman_ci": bootstrap_ci(sums, returns, args.bootstrap, args.seed),
            "pearson_step": pearson(per_step, env_per_step), "episodes": len(with_env),
            "frames_per_s": r.frames / max(r.seconds, 1e-9), "render_size": r.render_size,
            "mean_reward": by_behaviour, "auc": auc, "auc_ci": ci})
    env_means = {}
    for b in behaviours:
        mine = [e["env_return"] for e in episodes if e["behaviour"] == b.name and e["env_return"] is not None]
        env_means[b.name] = float(np.mean(mine)) if mine else None
    return {"env_id": args.env_id, "scene": args.scene, "protocol": args.protocol, "episodes_per_behaviour":
            args.episodes, "seed": args.seed, "behaviours": [b.name for b in behaviours],
            "env_return": env_means, "rows": rows}


# ----- outputs -----
def fmt(x, spec=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def write_outputs(args: Args, summary: dict, rewards: list[Reward], episodes: list[dict]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = summary["rows"]
    behaviours = summary["behaviours"]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reward", "prompt", "spearman", "spearman_ci_low", "spearman_ci_high", "pearson_step", "episodes",
                    "frames_per_s", *[f"mean_reward[{b}]" for b in behaviours]])
        for r in rows:
            w.writerow([r["reward"], r["prompt"], r["spearman"], *r["spearman_ci"], r["pearson_step"], r["episodes"],
                        r["frames_per_s"], *[r["mean_reward"][b] for b in behaviours]])
    with open(out / "episodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["behaviour", "episode", "clip", "steps", "env_return",
                    *[f"{r.name} | {r.prompt} | {what}" for r in rewards for what in ("sum", "mean")]])
        for e in episodes:
            w.writerow([e["behaviour"], e["episode"], e["clip"], e["steps"], e["env_return"],
                        *[e[f"r{k}_{what}"] for k in range(len(rewards)) for what in ("sum", "mean")]])
    lines = [f"# Rewards against {summary['env_id']}'s own reward",
             *([] if "stopped" not in summary else ["", f"**Incomplete: stopped {summary['stopped']}.**"]),
             "", f"{args.episodes} episodes per policy behaviour (env seeds {args.seed}...), scene {args.scene}, "
             f"protocol {args.protocol}; Spearman of the episodes' reward sums with their env returns (95% bootstrap "
             f"interval over episodes, {args.bootstrap} resamples), Pearson of per-step rewards with the env's.", "",
             "| reward | prompt | Spearman | 95% CI | Pearson per step | episodes | frames/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["spearman_ci"]
        lines.append(f"| {r['reward']} | {r['prompt']} | {fmt(r['spearman'], '+.2f')} | [{fmt(lo, '+.2f')}, "
                     f"{fmt(hi, '+.2f')}] | {fmt(r['pearson_step'], '+.2f')} | {r['episodes']} | "
                     f"{fmt(r['frames_per_s'], '.0f')} |")
    lines += ["", "Mean reward per frame of each behaviour (env return: mean over its episodes)", "",
              "| behaviour | env return | " + " | ".join(f"{r['reward']}, {r['prompt']}" for r in rows) + " |",
              "|---|---|" + "---|" * len(rows)]
    for b in behaviours:
        lines.append(f"| {b} | {fmt(summary['env_return'][b], '.1f')} | "
                     + " | ".join(fmt(r["mean_reward"][b], '+.3f') for r in rows) + " |")
    if any(b.startswith("clips:") for b in behaviours):  # no env return: how the rewards order the behaviours
        pairs = list(rows[0]["auc"])
        lines += ["", "AUC: the fraction of episode pairs in which the first behaviour's mean reward per frame is the "
                  f"higher (0.5: not told apart), with its 95% bootstrap interval ({args.bootstrap} resamples of each "
                  "behaviour's episodes)", "",
                  "| behaviours | " + " | ".join(f"{r['reward']}, {r['prompt']}" for r in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        lines += [f"| {pair} | " + " | ".join(f"{fmt(r['auc'][pair])} [{fmt(r['auc_ci'][pair][0])}, "
                                              f"{fmt(r['auc_ci'][pair][1])}]" for r in rows) + " |" for pair in pairs]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot_scatter(summary, episodes, out / "scatter.png")
    plot_correlations(summary, out / "correlations.png")


def short(reward: str) -> str:
    """A reward's name for plots: model folders by their last part, flags' names dropped (their values kept)."""
    return " ".join(Path(w).name or w for w in reward.split() if not w.startswith("--"))


def plot_scatter(summary: dict, episodes: list[dict], path: Path) -> None:
    """Episode reward sum against env return: one panel per (reward, prompt), a colour per behaviour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.4 * nrows), squeeze=False)
    with_env = [e for e in episodes if e["env_return"] is not None]
    names = [b for b in summary["behaviours"] if any(e["behaviour"] == b for e in with_env)]
    colors = plt.cm.viridis(np.linspace(0, 1, max(len(names), 1)))
    for k, (ax, r) in enumerate(zip(axes.flat, rows)):
        for b, c in zip(names, colors):
            mine = [e for e in with_env if e["behaviour"] == b]
            ax.scatter([e["env_return"] for e in mine], [e[f"r{k}_sum"] for e in mine], s=14, color=c, label=b)
        ax.set_title(f"{short(r['reward'])}\n\"{r['prompt']}\": Spearman {fmt(r['spearman'], '+.2f')}", fontsize=8)
        ax.set_xlabel("env return")
        ax.set_ylabel("episode reward sum")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    if names:
        axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_correlations(summary: dict, path: Path) -> None:
    """Spearman (with its bootstrap interval) and Pearson per step, a pair of bars per (reward, prompt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    x = np.arange(len(rows))
    sp = np.array([r["spearman"] for r in rows], dtype=float)
    ci = np.array([r["spearman_ci"] for r in rows], dtype=float).reshape(len(rows), 2)
    err = np.abs(np.stack([sp - ci[:, 0], ci[:, 1] - sp]))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 2), 4))
    ax.bar(x - 0.2, np.nan_to_num(sp), 0.4, yerr=np.nan_to_num(err), capsize=3, label="Spearman, episodes (95% CI)")
    ax.bar(x + 0.2, [np.nan_to_num(r["pearson_step"]) for r in rows], 0.4, label="Pearson, per step")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(x, [f"{short(r['reward'])}\n{r['prompt'][:40]}" for r in rows], fontsize=6, rotation=30, ha="right")
    ax.set_ylabel(f"correlation with {summary['env_id']}'s reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = tyro.cli(Args)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering (set before mujoco is imported)
    try:
        summary = evaluate(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except core.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:  # loading the models, or a second Ctrl-C
        print("Ctrl-C: stopped at once; nothing was written", file=sys.stderr)
        sys.exit(core.EXIT_CTRL_C)
    for r in summary["rows"]:
        lo, hi = r["spearman_ci"]
        print(f"{r['reward']} | {r['prompt']}: Spearman {fmt(r['spearman'], '+.2f')} [{fmt(lo, '+.2f')}, "
              f"{fmt(hi, '+.2f')}], Pearson per step {fmt(r['pearson_step'], '+.2f')}, {r['episodes']} episodes, "
              f"{fmt(r['frames_per_s'], '.0f')} frames/s")
    print(f"results in {args.out}/ (summary.md, summary.csv, summary.json, episodes.csv, scatter.png, correlations.png)")


if __name__ == "__main__":
    main()
