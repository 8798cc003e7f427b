"""Learning figures: N seeds of a training script for K steps; prints mean and std of the final eval return.

Each seed runs as its own process (one torch thread each, --jobs at a time) in runs/learning__*; the final
deterministic evaluation (--eval-episodes episodes) is read from each run's summary.json.

    python benchmarks/learning.py --env-id Hopper-v4 --seeds 3 --steps 100000
    python benchmarks/learning.py --script sac_env_reward.py --env-id Pendulum-v1 --seeds 3 --steps 15000
Extra arguments after -- go to the training script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--script", default="sac_env_reward.py")
    p.add_argument("--env-id", default="Hopper-v4")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="seeds trained at the same time")
    p.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    a, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    runs, procs = [], []
    t0 = time.time()
    for seed in range(1, a.seeds + 1):
        name = f"learning__{Path(a.script).stem}__{a.env_id.replace('/', '-')}__{a.tag}__s{seed}"
        cmd = [sys.executable, str(ROOT / a.script), "--env-id", a.env_id, "--seed", str(seed),
               "--total-timesteps", str(a.steps), "--eval-episodes", str(a.eval_episodes), "--threads", "1",
               "--run-name", name, "--no-progress", *extra]
        while sum(pr.poll() is None for pr in procs) >= a.jobs:
            time.sleep(2)
        print(" ".join(cmd[1:]), flush=True)
        log = open(ROOT / "runs" / f"{name}.log", "w") if (ROOT / "runs").is_dir() else subprocess.DEVNULL
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        runs.append(ROOT / "runs" / name)
    codes = [pr.wait() for pr in procs]
    finals, sps = [], []
    for run, code in zip(runs, codes):
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
        if code != 0 or summary is None:
            print(f"{run.name}: failed (exit {code})")
            continue
        finals.append(float(np.mean(summary["eval_returns"])))
        sps.append(summary.get("learning_sps", float("nan")))
        print(f"{run.name}: final eval return {finals[-1]:.1f}, learning-phase {sps[-1]:.1f} steps/s")
    if finals:
        print(f"\n{a.script} {a.env_id}, {a.steps} steps, {len(finals)} seeds ({a.jobs} at a time, 1 thread each), "
              f"{(time.time() - t0) / 60:.1f} min: final eval return {np.mean(finals):.1f} +- {np.std(finals):.1f} "
              f"(mean +- std over seeds; {a.eval_episodes} deterministic episodes each)")
    sys.exit(0 if len(finals) == a.seeds else 1)


if __name__ == "__main__":
    main()
