"""Learning-phase throughput of sac_env_reward.py against a plain eager SAC (CleanRL's sac_continuous_action).

Both run the same loop on the same env: `--learning-starts` random steps (not timed), then `--steps` steps of
acting + one update per step, timed. The baseline is CleanRL's own code, transcribed in benchmarks/cleanrl_sac.py
(two separate QNetworks, torch.distributions.Normal, torch.optim.Adam with default settings, critic gradients
computed in the actor loss and zeroed later, a fresh sample for the alpha loss, a Python loop for the Polyak
update). Variants run interleaved, `--repeats` times. Printed: each variant's median steps/s, the ratio of medians,
and the median of the per-repeat ratios (each run against the baseline run just before it, which cancels most of a
shared machine's slow drift in speed). --against REV adds sac_env_reward.py as it was at a git revision: the A/B
of a change to the SAC core, measured in the same run.

    python benchmarks/bench_sac.py --env-id Hopper-v4 --steps 2000 --repeats 2
    python benchmarks/bench_sac.py --env-id Hopper-v4 --steps 2000 --repeats 6 --compile --against HEAD~1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import cleanrl_sac  # noqa: E402
import sac_env_reward as sac  # noqa: E402


def run_cleanrl(env_id: str, learning_starts: int, steps: int, seed: int) -> float:
    """CleanRL's sac_continuous_action (benchmarks/cleanrl_sac.py, no logging or evaluation): learning-phase steps/s."""
    args = cleanrl_sac.Args(env_id=env_id, seed=seed, total_timesteps=learning_starts + steps,
                            learning_starts=learning_starts, eval_episodes=0)
    return cleanrl_sac.train(args)["learning_sps"]


def load_revision(rev: str):
    """sac_env_reward.py as it was at git revision rev, imported as a module of its own."""
    text = subprocess.run(["git", "show", f"{rev}:sac_env_reward.py"], cwd=ROOT, capture_output=True, text=True)
    if text.returncode != 0:
        sys.exit(f"error: --against {rev}: {text.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / f"sac_env_reward_{rev.replace('/', '_')}.py"
    path.write_text(text.stdout)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_ours(env_id: str, learning_starts: int, steps: int, seed: int, compile: bool, sac=sac,
             cudagraphs: bool = False) -> float:
    """sac_env_reward.py's train() in a temporary folder (no evaluation, checkpoints or buffer saved): learning-phase
    steps/s. sac: the module (another revision of the script: load_revision)."""
    return train_ours(env_id, learning_starts, steps, seed, compile, sac, cudagraphs)["learning_sps"]


def train_ours(env_id: str, learning_starts: int, steps: int, seed: int, compile: bool, sac=sac,
               cudagraphs: bool = False, eval_episodes: int = 0) -> dict:
    """run_ours' run, its summary.json (with eval_episodes: the final evaluation's returns too)."""
    if compile:  # compiled graphs of earlier variants forgotten: dynamo's recompile limit (8 per function) counts
        torch._dynamo.reset()  # every SAC instance's, and past it the update silently runs eagerly
    with tempfile.TemporaryDirectory() as d:
        cwd = os.getcwd()
        os.chdir(d)
        try:
            args = sac.Args(env_id=env_id, seed=seed, total_timesteps=learning_starts + steps,
                            learning_starts=learning_starts, eval_every=0, eval_episodes=eval_episodes,
                            checkpoint_every=0, save_buffer=False, progress=False, compile=compile,
                            cudagraphs=cudagraphs, run_name="bench")
            args, run_dir = sac.prepare_run(args, sac.Args)
            return sac.train(args, run_dir, sac.build_reward)
        finally:
            os.chdir(cwd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Hopper-v4")
    p.add_argument("--learning-starts", type=int, default=5000)
    p.add_argument("--steps", type=int, default=2000, help="timed learning steps per variant")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure sac_env_reward.py --compile")
    p.add_argument("--against", metavar="REV", default=None,
                   help="also sac_env_reward.py as it was at this git revision (e.g. HEAD~3): an A/B of a change")
    a = p.parse_args()
    variants = {"cleanrl (eager baseline)": lambda s: run_cleanrl(a.env_id, a.learning_starts, a.steps, s),
                "sac_env_reward.py": lambda s: run_ours(a.env_id, a.learning_starts, a.steps, s, False)}
    if a.compile:
        variants["sac_env_reward.py --compile"] = lambda s: run_ours(a.env_id, a.learning_starts, a.steps, s, True)
    if a.against:
        old = load_revision(a.against)
        variants[f"sac_env_reward.py at {a.against}"] = lambda s: run_ours(a.env_id, a.learning_starts, a.steps, s,
                                                                            False, old)
        if a.compile:
            variants[f"sac_env_reward.py at {a.against} --compile"] = lambda s: run_ours(
                a.env_id, a.learning_starts, a.steps, s, True, old)
    results = {k: [] for k in variants}
    for r in range(a.repeats):
        for name, fn in variants.items():
            results[name].append(fn(r + 1))
            print(f"  repeat {r + 1} {name}: {results[name][-1]:.1f} steps/s", flush=True)
    base_runs = results["cleanrl (eager baseline)"]
    base = statistics.median(base_runs)
    print(f"\n{a.env_id}, learning phase, {a.steps} steps x {a.repeats} repeats, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| variant | steps/s (median) | ratio of medians | per-repeat ratios: median (range) |\n|-|-|-|-|")
    for name, v in results.items():
        ratios = [x / b for x, b in zip(v, base_runs)]  # each against the baseline run just before it
        print(f"| {name} | {statistics.median(v):.1f} | {statistics.median(v) / base:.2f}x | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
