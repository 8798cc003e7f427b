"""The benchmarks' tools: CleanRL's SAC transcribed (benchmarks/cleanrl_sac.py), learning.py --compare and the GPU
check's CPU mode (gpu_check.py --cpu). The figures themselves come from long runs outside the suite
(docs/speed.md#learning, docs/speed.md#gpu); here the tools run, shortened."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script, scalars

sys.path.insert(0, str(ROOT / "benchmarks"))
import cleanrl_sac  # noqa: E402
import gpu_check  # noqa: E402
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


# ----- benchmarks/gpu_check.py: the GPU check's CPU mode, so that the GPU path cannot rot -----

@pytest.mark.heavy
def test_gpu_check_cpu_mode_runs_every_section_and_writes_its_table(tmp_path):
    """gpu_check.py --cpu: every section on tiny configs (the GPU run's code paths), one markdown table on stdout
    and the same rows in --out's JSON, with the device, date and versions."""
    import datetime

    import diffusers
    import transformers
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    out = tmp_path / "check.json"
    today = lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")  # noqa: E731
    days = {today()}
    proc = run_script("benchmarks/gpu_check.py", "--cpu", "--out", str(out), cwd=tmp_path, timeout=900)
    days.add(today())
    result = json.loads(out.read_text())
    header, rows = result["header"], result["rows"]
    assert (header["torch"], header["diffusers"], header["transformers"]) == (
        torch.__version__, diffusers.__version__, transformers.__version__)
    assert header["date"][:10] in days
    assert header["device"].startswith("CPU") and header["mode"].startswith("--cpu")
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # the header line, then one line per row
    assert [r["section"] for r in rows if r["section"] != "device"] == sorted(
        (r["section"] for r in rows if r["section"] != "device"), key=gpu_check.SECTIONS.index)
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    assert set(by) == {"device", *gpu_check.SECTIONS}
    assert not [r for r in rows if r["value"] == "error"], [r for r in rows if r["value"] == "error"]

    # sac: CleanRL's code and the variants, each with its ratio to CleanRL's from the same run
    sac = {r["what"].split(": ", 1)[1]: r for r in by["sac"]}
    base = sac["CleanRL's code (benchmarks/cleanrl_sac.py)"]["steps_per_s"]
    for name in ("sac_env_reward.py, eager", "--cudagraphs", "--compile"):
        assert sac[name]["steps_per_s"] > 0 and abs(sac[name]["ratio"] - sac[name]["steps_per_s"] / base) < 1e-9
    assert sac["--compile --cudagraphs"]["skipped"]

    # reward: every family eager; the arithmetic split into its parts; sd21's denoiser counted independently here
    eager = {r["family"]: r for r in by["reward"] if r.get("mode") == "eager"}
    assert set(eager) == set(gpu_check.FAMILIES)
    for r in eager.values():
        assert len(r["frames_per_s"]) == 2 and min(r["frames_per_s"]) > 0
        parts = r["tflop_denoiser"] + r["tflop_vae_encoder"]
        assert r["tflop_vae_encoder"] > 0 and r["tflop_denoiser"] > 0 and parts <= r["tflop_per_frame"] * 1.0001
    torch.manual_seed(0)
    unet = gpu_check.tiny_parts("sd21")[1].eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # 2 x 16x16
        unet(torch.randn(2, 4, 16, 16), torch.tensor([450, 450]), encoder_hidden_states=torch.randn(2, 77, 32))
    assert abs(eager["sd21"]["tflop_denoiser"] * 1e12 - counter.get_total_flops()) < 1
    # --count-flops counts on the meta device (shapes only, no GPU): the same arithmetic as the run's
    meta = {r["family"]: r for r in gpu_check.main(["--cpu", "--count-flops"])["rows"]}
    for name, r in eager.items():
        assert meta[name]["tflop_per_frame"] == pytest.approx(r["tflop_per_frame"], rel=1e-9)
        assert meta[name]["tflop_denoiser"] == pytest.approx(r["tflop_denoiser"], rel=1e-9)
    compiled = [r for r in by["reward"] if r.get("mode") == "compile"]
    assert [r["family"] for r in compiled] == ["sd21"] and compiled[0]["frames_per_s"][0] > 0

    clip = by["clip"][0]
    assert min(clip["tensor_frames_per_s"] + clip["pil_frames_per_s"]) > 0

    main = by["main"][0]
    assert main["learning_sps"] > 0 and main["peak"]["rss_peak_gib"] > 0 and not main["error"]
    assert [r["ok"] for r in by["scripts"]] == [True, True, True]

    memory = {r["family"]: r for r in by["memory"]}
    assert set(memory) == set(gpu_check.FAMILIES)
    assert memory["sd21"]["peak"] == main["peak"]  # the main command's own run
    for name in ("wan", "animatediff"):
        assert memory[name]["peak"]["rss_peak_gib"] > 0 and not memory[name]["error"]
    cap = by["cap"][0]
    assert cap["family"] == "sd21" and cap["value"].startswith("ok") and "no CUDA" in cap["peak"]["cap"]


def test_gpu_check_reports_a_failing_variant_as_a_row_and_skips_what_overruns(monkeypatch):
    """A variant that raises is a row with its one-line error, the others still run; an item that does not fit
    what is left of its section's budget is a row saying so."""
    import bench_sac

    def ours(env_id, starts, steps, seed, compile, cudagraphs=False):
        if compile:
            raise TypeError("expected Tensor as element 0 in argument 1, but got NoneType\nmore")
        return 300.0

    monkeypatch.setattr(bench_sac, "run_cleanrl", lambda *a, **k: 100.0)
    monkeypatch.setattr(bench_sac, "run_ours", ours)
    c = gpu_check.Check(gpu_check.parse(["--cpu", "--budget", "clip=0"]))
    c.tmp.rmdir()  # (nothing written there in this test)
    c.start("clip")
    gpu_check.section_clip(c)
    assert c.rows[-1]["skipped"] and "'clip' budget" in c.rows[-1]["note"]
    c.start("sac")
    gpu_check.section_sac(c)
    rows = {r["what"].split(": ", 1)[1]: r for r in c.rows if r["section"] == "sac"}
    assert rows["--cudagraphs"]["ratio"] == 3.0 and rows["sac_env_reward.py, eager"]["value"] == "300.0 steps/s"
    assert rows["--compile"]["value"] == "error"
    assert rows["--compile"]["error"] == "TypeError: expected Tensor as element 0 in argument 1, but got NoneType"


def test_gpu_check_child_wrapper_records_peak_memory_and_the_one_line_error(tmp_path):
    """A script run through the wrapper that fails: its one-line error, and the peak memory written at exit."""
    r = gpu_check.run_child("sac_sds.py", ["--env-id", "Walker2d-v4", "--prompt", "a person walking", "--model-id",
                                           str(tmp_path / "absent")], tmp_path, timeout=300)
    assert r["rc"] == 2 and r["error"].startswith("error: ") and "absent" in r["error"]
    assert r["peak"]["rss_peak_gib"] > 0.05  # torch and the script were imported
    assert not (tmp_path / "runs").exists()  # bad input writes nothing


def test_gpu_check_one_line_error_skips_exceptions_ignored_at_exit():
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "TypeError: expected Tensor\nException ignored in: <function OffScreenViewer.__del__>\n"
              "Traceback (most recent call last):\n  File \"r.py\", line 2\nOpenGL.raw.EGL._errors.EGLError: 12288\n")
    assert gpu_check.one_line_error(stderr, 1) == "TypeError: expected Tensor"
    assert gpu_check.one_line_error("boom\nerror: --model-id x: not found\n", 2) == "error: --model-id x: not found"
    assert gpu_check.one_line_error("", 137) == "exit status 137"


def test_gpu_check_bad_budget_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "check.json"
    proc = run_script("benchmarks/gpu_check.py", "--cpu", "--budget", "rewards=10", "--out", str(out), cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --budget rewards=10")
    assert not out.exists()
