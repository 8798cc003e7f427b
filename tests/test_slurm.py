"""slurm/: sweep files, submit.sh, and sweeps run on a real single-node SLURM (munged + slurmctld + slurmd).

The SLURM tests start their own cluster on this host (slurm/localslurm.py: config, key, state and logs in a temp
folder, free ports) and stop it at the end. They need root and the Debian packages slurm-wlm and munge, and are
skipped, saying so, without them. Training runs are tiny Pendulum runs of sac_env_reward.py in a temp folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("slurm")  # one local cluster (its daemons, its ports): one worker

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = ROOT / "slurm"
SUBMIT = SLURM_DIR / "submit.sh"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"slurm_{name}", SLURM_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sweepfile = _load("sweepfile")
localslurm = _load("localslurm")

TINY = ("--env-id Pendulum-v1 --learning-starts 100 --batch-size 32 --buffer-size 2000 --eval-episodes 0 "
        "--threads 1")


# ---------------------------------------------------------------------------------------------------------------
# Sweep files (no SLURM needed)
# ---------------------------------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tasks_skip_blank_and_comment_lines_and_keep_file_order(tmp_path):
    f = write(tmp_path / "s.txt", "# header\n\nsac_env_reward.py --seed 1\n   # indented comment\n"
                                  "python sac_clip.py --prompt 'a #1 runner' --seed 2  # trailing comment\n\n"
                                  "python3 sac_sds.py --prompt \"x y\"\n")
    tasks = sweepfile.read_tasks(f)
    assert [(t.index, t.line) for t in tasks] == [(0, 3), (1, 5), (2, 7)]
    assert tasks[1].argv == ["sac_clip.py", "--prompt", "a #1 runner", "--seed", "2"]
    assert tasks[2].argv == ["sac_sds.py", "--prompt", "x y"]
    assert sweepfile.eval_args(f) == []
    g = write(tmp_path / "g.txt", '# eval: --episodes 2 --prompt "a b"  # note\nsac_env_reward.py\n  #eval: --x 1\n')
    assert len(sweepfile.read_tasks(g)) == 1 and sweepfile.eval_args(g) == ["--episodes", "2", "--prompt", "a b", "--x", "1"]


def test_task_lookup_agrees_with_the_array_size(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = write(tmp_path / "s.txt", "# c\nsac_env_reward.py --seed 1\n\nsac_env_reward.py --seed 2\n")
    assert sweepfile.main(["check", "s.txt"]) == 2  # the scripts must be in the folder one submits from
    assert "sac_env_reward.py not found" in capsys.readouterr().err
    (tmp_path / "sac_env_reward.py").write_text("")
    assert sweepfile.main(["check", "s.txt"]) == 0
    count = int(capsys.readouterr().out)
    assert count == 2
    for i in range(count):
        assert sweepfile.main(["task", str(f), str(i)]) == 0
        assert f"--seed {i + 1}" in capsys.readouterr().out
    assert sweepfile.main(["task", str(f), str(count)]) == 2
    assert "has tasks 0-1" in capsys.readouterr().err


def test_run_names_are_stable_and_readable(tmp_path):
    a = write(tmp_path / "exp.txt", 'sac_sds.py --env-id dm_control/humanoid-stand-v0 --prompt "a person kneeling" --seed 2\n')
    (tmp_path / "b").mkdir()
    b = write(tmp_path / "b" / "exp.txt",
              "# moved, reformatted, commented, other line number\n\n"
              "python   sac_sds.py --env-id 'dm_control/humanoid-stand-v0'  --prompt 'a person kneeling' --seed 2 # hi\n")
    c = write(tmp_path / "c.txt", 'sac_sds.py --env-id dm_control/humanoid-stand-v0 --prompt "a person kneeling" --seed 3\n')
    (ta,), (tb,), (tc,) = sweepfile.read_tasks(a), sweepfile.read_tasks(b), sweepfile.read_tasks(c)
    assert ta.run_name == tb.run_name  # same command, same run: a requeue or a resubmission resumes it
    assert re.fullmatch(r"exp__sds__dm-control-humanoid-stand-v0__a-person-kneeling__s2__[0-9a-f]{8}", ta.run_name)
    assert tc.run_name.startswith("c__sds__") and tc.run_name.split("__")[-1] != ta.run_name.split("__")[-1]
    own = write(tmp_path / "own.txt", "sac_env_reward.py --run-name=mine --seed 1\n")
    (t,) = sweepfile.read_tasks(own)
    assert t.run_name == "mine" and t.fresh_command() == ["sac_env_reward.py", "--run-name=mine", "--seed", "1",
                                                          "--no-progress"]
    assert ta.fresh_command()[-3:] == ["--run-name", ta.run_name, "--no-progress"]
    assert ta.resume_command() == ["sac_sds.py", "--resume", f"runs/{ta.run_name}"]
    sched = write(tmp_path / "sched.txt", "sac_clip.py --env-id Pendulum-v1 --prompt-schedule "
                                          "'0:a pendulum hanging down;100:a pendulum pointing up' --seed 1\n")
    (t,) = sweepfile.read_tasks(sched)
    assert re.fullmatch(r"sched__clip__Pendulum-v1__a-pendulum-hanging-down-then-a-pendulum__s1__[0-9a-f]{8}",
                        t.run_name), t.run_name


@pytest.mark.parametrize("text, message", [
    ("sac_env_reward.py --seed 1\nsac_env_reward.py  --seed '1'\n", "line 2: same run as line 1"),
    ("sac_env_reward.py --prompt 'unclosed\n", "line 1: cannot parse"),
    ("--env-id Hopper-v4\n", "line 1: a command starts with the training script"),
    ("sac_env_reward.py --resume runs/x\n", "line 1: remove --resume"),
    ("# only comments\n\n", "no commands"),
    ("sac_env_reward.py --run-name ../../somewhere\n", "line 1: run name '../../somewhere'"),
    ("sac_env_reward.py --run-name=a/b\n", "line 1: run name 'a/b'"),
    ("sac_env_reward.py --run-name ..\n", "line 1: run name '..'"),
])
def test_bad_sweep_files_are_refused_with_the_line(tmp_path, capsys, text, message):
    f = write(tmp_path / "bad.txt", text)
    assert sweepfile.main(["runs", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_ready_sweeps_cover_the_comparison():
    sweeps = {p.stem: sweepfile.read_tasks(p) for p in (SLURM_DIR / "sweeps").glob("*.txt")}
    assert {"paper", "locomotion", "pendulum", "novel"} <= set(sweeps)
    value = sweepfile.flag_value

    paper = sweeps["paper"]  # TADPoLe's rows as TADPoLe ran them: its protocol, 5 seeds, every reward source
    assert all(value(t.argv, "--protocol") == "tadpole" for t in paper)
    rows = {(value(t.argv, "--env-id"), value(t.argv, "--prompt")) for t in paper if t.script == "sac_sds.py"}
    assert {("dm_control/humanoid-stand-v0", "a person standing"), ("dm_control/dog-stand-v0", "a dog standing"),
            ("dm_control/humanoid-stand-v0", "a person doing splits"), ("dm_control/humanoid-walk-v0",
            "a person walking"), ("dm_control/dog-walk-v0", "a dog walking"),
            ("metaworld/door-close-v3", "closing a door")} <= rows
    metaworld = {env for env, _ in rows if env.startswith("metaworld/")}
    assert len(metaworld) == 12
    for env, prompt in rows:
        runs = [t for t in paper if value(t.argv, "--env-id") == env and value(t.argv, "--prompt") in (prompt, None)]
        scripts = {t.script for t in runs}
        assert {"sac_sds.py", "sac_clip.py"} <= scripts, env
        assert {value(t.argv, "--seed") for t in runs} == set("12345"), env
        if env.startswith("metaworld/"):  # Meta-World's own environment, and TADPoLe's success bonus
            assert all(t.python == ".venv-metaworld/bin/python" for t in runs)
            assert "sac_env_reward.py" in scripts
            assert {value(t.argv, "--success-bonus") for t in runs if t.script != "sac_env_reward.py"} == {"2"}
    video = [t for t in paper if value(t.argv, "--env-id").endswith("walk-v0") and t.script == "sac_sds.py"]
    assert video and all(value(t.argv, "--motion-adapter-id") for t in video)

    locomotion = sweeps["locomotion"]
    combos = {(t.script, value(t.argv, "--env-id"), value(t.argv, "--seed")) for t in locomotion}
    assert combos == {(s, e, seed) for s in ("sac_env_reward.py", "sac_clip.py", "sac_sds.py")
                      for e in ("Walker2d-v4", "Hopper-v4", "HalfCheetah-v4", "Humanoid-v4") for seed in "123"}
    assert all(value(t.argv, "--prompt") for t in locomotion if t.script != "sac_env_reward.py")

    pendulum = sweeps["pendulum"]
    assert {value(t.argv, "--env-id") for t in pendulum} == {"Pendulum-v1"}
    for script, model_flag, model in (("sac_clip.py", "--clip-model-id", "demo/pendulum-clip"),
                                      ("sac_sds.py", "--model-id", "demo/pendulum-sd")):
        runs = [t for t in pendulum if t.script == script]
        assert {value(t.argv, model_flag) for t in runs} == {model}
        assert {(value(t.argv, "--prompt"), value(t.argv, "--seed")) for t in runs} == {
            (p, s) for p in ("a pendulum pointing up", "a pendulum pointing down") for s in "123"}
    assert {value(t.argv, "--seed") for t in pendulum if t.script == "sac_env_reward.py"} == set("123")
    scoring = sweepfile.eval_args(SLURM_DIR / "sweeps" / "pendulum.txt")  # scored by the Pendulum world's models
    assert value(["eval"] + scoring, "--clip-model-id") == "demo/pendulum-clip"

    novel = sweeps["novel"]
    assert {t.script for t in novel} == {"sac_clip.py", "sac_sds.py"}  # the env reward cannot express these
    assert len({value(t.argv, "--prompt") for t in novel}) >= 3
    for tasks in sweeps.values():  # every line of every sweep: flags its script has
        for t in tasks:
            flags = {a.split("=")[0] for a in t.argv[1:] if a.startswith("--")}
            module = {"sac_env_reward.py": "sac_env_reward", "sac_clip.py": "sac_clip", "sac_sds.py": "sac_sds"}
            known = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(
                importlib.import_module(module[t.script]).Args)}
            assert flags <= known, (t.line, flags - known)


def test_a_line_may_name_its_own_python(tmp_path):
    f = write(tmp_path / "mixed.txt", "sac_env_reward.py --seed 1\npython sac_env_reward.py --seed 2\n"
              ".venv-metaworld/bin/python sac_env_reward.py --env-id metaworld/door-close-v3 --seed 3\n")
    tasks = sweepfile.read_tasks(f)
    assert [t.python for t in tasks] == ["", "", ".venv-metaworld/bin/python"]
    assert [t.script for t in tasks] == ["sac_env_reward.py"] * 3
    assert tasks[2].run_name == sweepfile.run_name("mixed", tasks[2].argv)  # the interpreter is not in the name


def test_shell_scripts_parse_and_refuse_to_run_outside_an_array_job(tmp_path):
    for script in ("submit.sh", "sweep.sbatch", "eval.sbatch"):
        subprocess.run(["bash", "-n", str(SLURM_DIR / script)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(SLURM_DIR / "sweep.sbatch"), "x.txt"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "submit with: slurm/submit.sh" in result.stderr


def test_submit_dry_run_shows_array_throttle_resources_and_dependency(tmp_path):
    (tmp_path / "sac_env_reward.py").write_text("")
    write(tmp_path / "three.txt", "# c\nsac_env_reward.py --seed 1\n\nsac_env_reward.py --seed 2\nsac_env_reward.py --seed 3\n")
    env = dict(os.environ, PYTHON=sys.executable, GPUS="a100:2", CPUS="3", MEM="5G", TIME="1:00:00",
               PARTITION="gpu", ACCOUNT="lab", EXTRA_SBATCH="--qos=high")
    result = subprocess.run(["bash", str(SUBMIT), "--dry-run", "--throttle", "2", "three.txt"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "3 task(s)" in out and "--array=0-2%2" in out
    for option in ("--gres=gpu:a100:2", "--cpus-per-task=3", "--mem=5G", "--time=1:00:00", "--partition=gpu",
                   "--account=lab", "--qos=high", "--dependency=afterok:", "--kill-on-invalid-dep=yes"):
        assert option in out, option
    assert not (tmp_path / "logs").exists()  # a dry run submits and writes nothing
    bad = subprocess.run(["bash", str(SUBMIT), "--throttle", "0", "three.txt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--throttle takes a positive whole number" in bad.stderr


# ---------------------------------------------------------------------------------------------------------------
# A real SLURM
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    missing = localslurm.missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM test cluster needs root (slurmd runs jobs as SlurmUser=root)")
    # not under pytest's tmp folders: munged wants every parent of its socket searchable by everyone
    root = Path(tempfile.mkdtemp(prefix="localslurm-"))
    c = localslurm.LocalSlurm(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


FAKE_EVAL = """\
import json, sys, time
from pathlib import Path
runs, out = [a for a in sys.argv[1:] if a.startswith("runs/")], Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "fake_eval.json").write_text(json.dumps({"runs": runs, "argv": sys.argv[1:], "start": time.time(),
                                                "finished": [Path(r, "summary.json").is_file() for r in runs]}))
"""


def workdir(tmp_path: Path, name: str, lines: list[str]) -> Path:
    """A folder to submit from: the training script, a stand-in evaluator and a sweep file."""
    shutil.copy(ROOT / "sac_env_reward.py", tmp_path)
    (tmp_path / "fake_eval.py").write_text(FAKE_EVAL)
    write(tmp_path / f"{name}.txt", "# a test sweep\n\n" + "\n".join(lines) + "\n")
    return tmp_path


def submit(cluster, cwd: Path, *args: str, expect_sweep: bool = True):
    """slurm/submit.sh with tiny resources; returns (array job id, eval job id or None, output)."""
    env = cluster.env()
    env.update(PYTHON=sys.executable, GPUS="0", CPUS="1", MEM="500M", TIME="15",
               EVAL_CMD=f"{sys.executable} fake_eval.py")
    result = subprocess.run(["bash", str(SUBMIT), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if not expect_sweep:
        return result.stdout
    job = re.search(r"as array job (\d+)", result.stdout).group(1)
    eval_job = re.search(r"evaluation: job (\d+)", result.stdout)
    return job, eval_job and eval_job.group(1), result.stdout


def logs(cwd: Path) -> str:
    return "\n".join(f"=== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((cwd / "logs").glob("*.out")))


def global_step(run: Path) -> int:
    import torch

    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.timeout(300)
def test_sweep_completes_with_checkpoints_then_eval_runs(cluster, tmp_path):
    cwd = workdir(tmp_path, "three", ['# eval: --episodes 2 --prompt "a pendulum"'] +
                  [f"sac_env_reward.py {TINY} --total-timesteps 300 --seed {s}" for s in (1, 2, 3)])
    job, eval_job, out = submit(cluster, cwd, "--throttle", "2", "three.txt")
    assert "eval/three/" in out and f"logs/{job}_<task>.out" in out
    assert cluster.show_job(f"{job}_0").get("ArrayTaskThrottle") == "2"
    states = cluster.wait([job, eval_job], timeout=240)
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs(cwd)}"
    assert len(states) == 4  # three tasks and the evaluation

    runs = [cwd / "runs" / t.run_name for t in sweepfile.read_tasks(cwd / "three.txt")]
    for i, run in enumerate(runs):
        assert global_step(run) == 300 and json.loads((run / "summary.json").read_text())["global_step"] == 300
        assert f"finished runs/{run.name}" in (cwd / "logs" / f"{job}_{i}.out").read_text()
    report = json.loads((cwd / "eval" / "three" / "fake_eval.json").read_text())
    assert report["runs"] == [f"runs/{r.name}" for r in runs] and all(report["finished"])
    assert report["argv"][3:] == ["--episodes", "2", "--prompt", "a pendulum", "--out", "eval/three"]
    assert report["start"] >= max((r / "summary.json").stat().st_mtime for r in runs)  # after the whole sweep
    assert "done: results in eval/three" in (cwd / "logs" / f"{eval_job}.out").read_text()

    # Submitting the same sweep again completes only what is missing: here nothing.
    before = [(r / "checkpoint.pt").stat().st_mtime_ns for r in runs]
    job2, _, _ = submit(cluster, cwd, "--no-eval", "three.txt")
    states = cluster.wait([job2], timeout=120)
    assert set(states.values()) == {"COMPLETED"}, logs(cwd)
    for i in range(3):
        assert "already finished (summary.json): nothing to do" in (cwd / "logs" / f"{job2}_{i}.out").read_text()
    assert [(r / "checkpoint.pt").stat().st_mtime_ns for r in runs] == before


@pytest.mark.timeout(300)
def test_usr1_checkpoints_requeues_and_resumes_to_the_full_step_count(cluster, tmp_path):
    total = 1000
    cwd = workdir(tmp_path, "long", [f"sac_env_reward.py {TINY} --total-timesteps {total} --checkpoint-every 100"])
    job, eval_job, _ = submit(cluster, cwd, "long.txt")
    (task,) = sweepfile.read_tasks(cwd / "long.txt")
    run = cwd / "runs" / task.run_name
    deadline = time.monotonic() + 150
    while not (run / "checkpoint.pt").exists():  # training is under way
        assert time.monotonic() < deadline, logs(cwd)
        assert cluster.jobs().get(f"{job}_0") in ("PENDING", "RUNNING", "CONFIGURING"), logs(cwd)
        time.sleep(0.5)
    cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_0")  # what --signal=B:USR1@300 sends

    states = cluster.wait([job, eval_job], timeout=240)
    log = (cwd / "logs" / f"{job}_0.out").read_text()
    assert states == {f"{job}_0": "COMPLETED", eval_job: "COMPLETED"}, f"{states}\n{logs(cwd)}"
    stopped = re.search(r"SIGUSR1 at step (\d+): checkpoint saved", log)
    assert stopped and 0 < int(stopped.group(1)) < total, log
    assert f"requeueing {job}_0" in log
    assert f"resumed runs/{task.run_name} at step {stopped.group(1)} " in log, log
    assert "restart 1" in log and f"finished runs/{task.run_name}" in log
    assert cluster.show_job(f"{job}_0").get("Restarts") == "1"
    assert global_step(run) == total
    assert json.loads((run / "summary.json").read_text())["global_step"] == total
    history = (run / "slurm_history.txt").read_text()
    assert [line.split(": ", 1)[1] for line in history.splitlines()] == [
        "started", "checkpointed, requeued", "resumed (restart 1)", "finished"]


@pytest.mark.timeout(300)
def test_a_malformed_line_fails_its_task_only(cluster, tmp_path):
    lines = [f"sac_env_reward.py {TINY} --total-timesteps 300 --seed 1",
             f"sac_env_reward.py {TINY} --total-timesteps 300 --no-such-flag 3",
             "sac_env_reward.py --env-id Pendulum-v9 --total-timesteps 300",
             f"sac_env_reward.py {TINY} --total-timesteps 300 --seed 2"]
    cwd = workdir(tmp_path, "mixed", lines)
    job, eval_job, _ = submit(cluster, cwd, "mixed.txt")
    states = cluster.wait([job, eval_job], timeout=240)
    expected = {f"{job}_0": "COMPLETED", f"{job}_1": "FAILED", f"{job}_2": "FAILED", f"{job}_3": "COMPLETED",
                eval_job: "CANCELLED"}  # afterok can no longer hold: the evaluation is cancelled, not left pending
    assert states == expected, f"{states}\n{logs(cwd)}"
    tasks = sweepfile.read_tasks(cwd / "mixed.txt")
    for i in (1, 2):
        log = (cwd / "logs" / f"{job}_{i}.out").read_text()
        assert re.search(rf"error: task {i} \(\S+mixed.txt line {tasks[i].line}\) FAILED with exit status 2", log), log
    assert "Unrecognized options: --no-such-flag" in (cwd / "logs" / f"{job}_1.out").read_text()
    assert "error: unknown environment id 'Pendulum-v9'" in (cwd / "logs" / f"{job}_2.out").read_text()
    for i in (0, 3):
        assert global_step(cwd / "runs" / tasks[i].run_name) == 300
    assert not (cwd / "eval").exists()

    # The runs that did finish can still be evaluated, now.
    out = submit(cluster, cwd, "--eval-only", "mixed.txt", expect_sweep=False)
    eval_now = re.search(r"evaluation of sweep mixed: job (\d+)", out).group(1)
    assert cluster.wait([eval_now], timeout=120) == {eval_now: "COMPLETED"}, logs(cwd)
    report = json.loads((cwd / "eval" / "mixed" / "fake_eval.json").read_text())
    assert report["runs"] == [f"runs/{tasks[i].run_name}" for i in (0, 3)] and all(report["finished"])
    assert "warning: 2 run(s) of" in (cwd / "logs" / f"{eval_now}.out").read_text()


@pytest.mark.timeout(300)
def test_cancel_checkpoints_without_requeue_a_second_copy_is_refused_and_resubmission_resumes(cluster, tmp_path):
    total = 6000  # long enough to be still training when the copy is refused and scancel comes (1000 finished first)
    cwd = workdir(tmp_path, "again", [f"sac_env_reward.py {TINY} --total-timesteps {total} --checkpoint-every 100"])
    job, _, _ = submit(cluster, cwd, "--no-eval", "again.txt")
    (task,) = sweepfile.read_tasks(cwd / "again.txt")
    run = cwd / "runs" / task.run_name
    deadline = time.monotonic() + 150
    while not (run / "checkpoint.pt").exists():
        assert time.monotonic() < deadline, logs(cwd)
        time.sleep(0.5)

    # The same sweep submitted while its run is training: the second copy refuses to touch the run folder.
    copy, _, _ = submit(cluster, cwd, "--no-eval", "again.txt")
    assert cluster.wait([copy], timeout=120) == {f"{copy}_0": "FAILED"}, logs(cwd)
    assert "is being trained by another job right now" in (cwd / "logs" / f"{copy}_0.out").read_text()

    # scancel (SIGTERM to every process of the job): python saves a checkpoint; the task is not requeued.
    cluster.run("scancel", f"{job}_0")
    assert cluster.wait([job], timeout=120) == {f"{job}_0": "CANCELLED"}
    deadline = time.monotonic() + 30
    while "stopped by SIGTERM" not in (run / "slurm_history.txt").read_text():  # the shell may outlive the state change
        assert time.monotonic() < deadline, logs(cwd)
        time.sleep(0.5)
    log = (cwd / "logs" / f"{job}_0.out").read_text()
    stopped = re.search(r"SIGTERM at step (\d+): checkpoint saved", log)
    assert stopped and 0 < int(stopped.group(1)) < total, log
    assert "requeueing" not in log and cluster.show_job(f"{job}_0").get("Restarts") == "0"
    assert global_step(run) == int(stopped.group(1))

    # Submitting the sweep again resumes the run and finishes it.
    job3, _, _ = submit(cluster, cwd, "--no-eval", "again.txt")
    assert cluster.wait([job3], timeout=200) == {f"{job3}_0": "COMPLETED"}, logs(cwd)
    assert f"resumed runs/{task.run_name} at step {stopped.group(1)} " in (cwd / "logs" / f"{job3}_0.out").read_text()
    assert global_step(run) == total
