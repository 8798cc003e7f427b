"""The learning benchmark's tools: CleanRL's SAC transcribed (benchmarks/cleanrl_sac.py) and learning.py --compare.
The figures themselves come from long runs outside the suite (docs/speed.md#learning); here the tools run, shortened."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from conftest import ROOT, run_script, scalars

sys.path.insert(0, str(ROOT / "benchmarks"))
import cleanrl_sac  # noqa: E402
import sac_env_reward as sac  # noqa: E402


def test_cleanrl_sac_is_cleanrls_recipe_and_evaluates_as_the_project_does(in_tmp):
    args = cleanrl_sac.Args(env_id="Pendulum-v1", total_timesteps=400, learning_starts=200, eval_every=200,
                            eval_episodes=2, threads=1, run_name="c")
    agent = cleanrl_sac.CleanRLSAC(args, 3, sac.make_env(sac.SACArgs(env_id="Pendulum-v1")).action_space)
    assert agent.alpha == 1.0 and agent.log_alpha.item() == 0.0  # CleanRL's start: log_alpha = 0
    assert [g["lr"] for g in agent.a_optimizer.param_groups] == [1e-3]  # the temperature's lr is q_lr
    run = in_tmp / "runs" / "c"
    run.mkdir(parents=True)
    summary = cleanrl_sac.train(args, run)
    assert len(summary["eval_returns"]) == 2 and summary["learning_sps"] > 0
    assert json.loads((run / "summary.json").read_text())["eval_returns"] == summary["eval_returns"]
    assert [s for s, _ in scalars(run)["charts/eval_return"]] == [200, 400]
    # the evaluation is sac_env_reward.evaluate(): deterministic episodes from the same seeds give the same returns
    torch.manual_seed(0)
    actor = cleanrl_sac.Actor(3, np.array([-2.0], np.float32), np.array([2.0], np.float32))
    env = sac.make_env(sac.SACArgs(env_id="Pendulum-v1"))
    first = sac.evaluate(actor, env, 2, 10_001, torch.device("cpu"))[0]
    assert first == sac.evaluate(actor, env, 2, 10_001, torch.device("cpu"))[0]


def test_learning_compare_runs_every_variant_with_the_same_seeds_and_plots(tmp_path):
    """learning.py --compare, shortened: the three variants, one seed each, then the table and the curves."""
    plot = tmp_path / "curves.png"
    tag = f"test{tmp_path.name[-6:]}"
    proc = run_script("benchmarks/learning.py", "--compare", "--env-id", "Pendulum-v1", "--seeds", "1", "--steps",
                      "400", "--eval-every", "200", "--eval-episodes", "1", "--tag", tag, "--plot", str(plot),
                      "--", "--learning-starts", "200", cwd=tmp_path, timeout=600)
    runs = sorted((ROOT / "runs").glob(f"learning__v*__Pendulum-v1__{tag}__s1"))
    try:
        lines = proc.stdout.splitlines()
        rows = [line for line in lines if line.startswith("| ") and not line.startswith("| variant")]
        assert len(rows) == 3 and "CleanRL sac_continuous_action" in rows[2], proc.stdout
        assert plot.stat().st_size > 10_000
        assert len(runs) == 3
        assert [json.loads((r / "args.json").read_text())["seed"] for r in runs] == [1, 1, 1]
        assert json.loads((runs[1] / "args.json").read_text())["alpha"] == 1.0  # the CleanRL-start variant
    finally:
        import shutil

        for r in runs:
            shutil.rmtree(r, ignore_errors=True)
            r.with_suffix(".log").unlink(missing_ok=True)
