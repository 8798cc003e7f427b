"""Learning figures: N seeds of a training script for K steps; prints mean and std of the final eval return.

Each seed runs as its own process (one torch thread each, --jobs at a time) in runs/learning__*; the final
deterministic evaluation (--eval-episodes episodes) is read from each run's summary.json.

    python benchmarks/learning.py --env-id Hopper-v4 --seeds 3 --steps 100000
    python benchmarks/learning.py --script sac_env_reward.py --env-id Pendulum-v1 --seeds 3 --steps 15000

--compare runs, with the same seeds, steps and evaluation (every --eval-every steps, --eval-episodes episodes):
sac_env_reward.py with the temperature starting at 0.2 (--alpha 0.2, this project's start until the comparison in
docs/speed.md's Learning section made it adopt CleanRL's), sac_env_reward.py --alpha 1.0 (the start of CleanRL and
Stable-Baselines3: log_alpha = 0, now the default), and CleanRL's own sac_continuous_action
(benchmarks/cleanrl_sac.py). It prints a table and plots the eval-return curves (mean and std over seeds) to --plot
(default benchmarks/figures/learning_ENV.png). Finished runs of the same --tag are reused.

    python benchmarks/learning.py --compare --env-id Hopper-v4 --seeds 3 --steps 50000 --eval-every 5000 --tag hop
    python benchmarks/learning.py --compare --env-id Pendulum-v1 --seeds 3 --steps 15000 --eval-every 1000 \\
        --tag pen -- --learning-starts 1000

Extra arguments after -- go to every training script.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
COMPARE = {  # variant name -> script and its own flags
    "sac_env_reward.py (alpha starts at 0.2)": ["sac_env_reward.py", "--alpha", "0.2"],
    "sac_env_reward.py --alpha 1.0 (CleanRL's start)": ["sac_env_reward.py", "--alpha", "1.0"],
    "CleanRL sac_continuous_action (benchmarks/cleanrl_sac.py)": ["benchmarks/cleanrl_sac.py"],
}


def eval_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """charts/eval_return of a run folder: (steps, returns)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/eval_return") if "charts/eval_return" in acc.Tags()["scalars"] else []
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def plot(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in curves.items():
        steps = runs[0][0]
        if not len(steps) or any(len(s) != len(steps) or (s != steps).any() for s, _ in runs):
            continue  # seeds evaluated at different steps: not averaged
        values = np.stack([v for _, v in runs])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval return (deterministic)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", default="sac_env_reward.py", help="the training script (without --compare)")
    p.add_argument("--compare", action="store_true", help="the three variants above, side by side")
    p.add_argument("--env-id", default="Hopper-v4")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: the script's)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="seeds trained at the same time")
    p.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"), help="part of the run names; reruns reuse runs")
    p.add_argument("--plot", type=Path, default=None, help="--compare: the curves' figure")
    a, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    variants = COMPARE if a.compare else {a.script: [a.script]}
    env_slug = a.env_id.replace("/", "-")
    (ROOT / "runs").mkdir(exist_ok=True)
    runs: dict[str, list[Path]] = {}
    procs = []
    t0 = time.time()
    for k, (name, command) in enumerate(variants.items()):
        for seed in range(1, a.seeds + 1):
            stem = f"v{k}" if a.compare else Path(command[0]).stem
            run_name = f"learning__{stem}__{env_slug}__{a.tag}__s{seed}"
            runs.setdefault(name, []).append(ROOT / "runs" / run_name)
            if (ROOT / "runs" / run_name / "summary.json").exists():
                print(f"reusing runs/{run_name}")
                continue
            cmd = [sys.executable, str(ROOT / command[0]), *command[1:], "--env-id", a.env_id, "--seed", str(seed),
                   "--total-timesteps", str(a.steps), "--eval-episodes", str(a.eval_episodes), "--threads", "1",
                   "--run-name", run_name, "--no-progress", *extra]
            if a.eval_every is not None:
                cmd += ["--eval-every", str(a.eval_every)]
            while sum(pr.poll() is None for pr in procs) >= a.jobs:
                time.sleep(2)
            print(shlex.join(cmd[1:]), flush=True)
            log = open(ROOT / "runs" / f"{run_name}.log", "w")
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    for pr in procs:
        pr.wait()
    ok = True
    rows, curves = [], {}
    for name, folders in runs.items():
        finals, sps = [], []
        for run in folders:
            summary_path = run / "summary.json"
            if not summary_path.exists():
                print(f"{run.name}: failed (see runs/{run.name}.log)")
                ok = False
                continue
            summary = json.loads(summary_path.read_text())
            finals.append(float(np.mean(summary["eval_returns"])))
            sps.append(summary.get("learning_sps", float("nan")))
            curves.setdefault(name, []).append(eval_curve(run))
            print(f"{run.name}: final eval return {finals[-1]:.1f}, learning-phase {sps[-1]:.1f} steps/s")
        if finals:
            per_seed = ", ".join(f"{f:.1f}" for f in finals)
            mean_curve = np.mean([np.mean(v) if len(v) else np.nan for _, v in curves[name]])
            rows.append(f"| {name} | {np.mean(finals):.1f} ± {np.std(finals):.1f} | {per_seed} | {mean_curve:.1f} |")
    minutes = (time.time() - t0) / 60
    print(f"\n{a.env_id}, {a.steps} steps, seeds 1-{a.seeds} ({a.jobs} at a time, 1 thread each), {minutes:.1f} min; "
          f"final eval: {a.eval_episodes} deterministic episodes per seed; extra flags: {shlex.join(extra) or 'none'}")
    print("| variant | final eval return, mean ± std over seeds | per seed | mean over all evaluations |\n|-|-|-|-|")
    print("\n".join(rows))
    if a.compare and curves:
        path = a.plot or ROOT / "benchmarks" / "figures" / f"learning_{env_slug}.png"
        plot(curves, f"{a.env_id}: eval return, mean ± std over seeds", path)
        print(f"\ncurves: {path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
