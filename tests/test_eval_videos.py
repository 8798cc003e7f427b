"""eval_videos.py on real runs: short Pendulum trainings of the three scripts (tiny local CLIP and diffusion models),
trained once per session, then evaluated together with broken runs."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.xdist_group("eval_videos")  # its trained runs (a module fixture) are made once

from conftest import run_script

PROMPT = "a pendulum pointing up"
EPISODE_STEPS = 40  # short episodes: the evaluation renders and scores every frame
EPISODES, EVAL_SEED = 2, 500
TRAIN = ["--env-id", "Pendulum-v1", "--total-timesteps", "200", "--learning-starts", "100", "--batch-size", "32",
         "--max-episode-steps", str(EPISODE_STEPS), "--eval-every", "0", "--eval-episodes", "1", "--log-every", "100",
         "--checkpoint-every", "0", "--threads", "1", "--no-progress"]
GOOD = {  # run name -> (reward source, seed)
    "env_s1": ("env", 1), "env_s2": ("env", 2), "clip_s1": ("clip", 1), "sds_s1": ("sds", 1), "sds_s2": ("sds", 2),
}


def train(script: str, argv: list[str], cwd: Path) -> None:
    """Runs a training script's real entry point, main(Args, build_reward), in this process (no interpreter start
    and imports per run: they were most of the time), with argv as its command line, in cwd."""
    import importlib

    module = importlib.import_module(script)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "argv", [f"{script}.py", *argv])
        try:
            module.main(module.Args, module.build_reward)
        except SystemExit as e:
            pytest.fail(f"{script}.py {' '.join(argv)} exited with status {e.code}")
        finally:
            torch.set_num_threads(threads)  # --threads 1 must not slow down the rest of the session


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, tiny_sd, tiny_clip) -> Path:
    """A folder with runs/ of five short trainings (env x2 seeds, clip x1, sds x2), plus broken folders:
    not_a_run (no args.json), truncated (half a checkpoint), no_ckpt, bad_env (an unknown env id)."""
    root = tmp_path_factory.mktemp("eval_runs")
    extra = {
        "env": ["sac_env_reward"],
        "clip": ["sac_clip", "--clip-model-id", str(tiny_clip), "--prompt", PROMPT, "--reward-batch-size", "20"],
        "sds": ["sac_sds", "--model-id", str(tiny_sd), "--prompt", PROMPT, "--reward-batch-size", "20"],
    }
    for name, (source, seed) in GOOD.items():
        script, *flags = extra[source]
        train(script, [*TRAIN, *flags, "--seed", str(seed), "--run-name", name], root)
    runs = root / "runs"
    (runs / "not_a_run").mkdir()
    (runs / "not_a_run" / "notes.txt").write_text("nothing here")
    shutil.copytree(runs / "env_s1", runs / "truncated")
    ckpt = (runs / "truncated" / "checkpoint.pt").read_bytes()
    (runs / "truncated" / "checkpoint.pt").write_bytes(ckpt[: len(ckpt) // 2])
    shutil.copytree(runs / "env_s1", runs / "no_ckpt")
    (runs / "no_ckpt" / "checkpoint.pt").unlink()
    shutil.copytree(runs / "env_s1", runs / "bad_env")
    args = json.loads((runs / "bad_env" / "args.json").read_text())
    (runs / "bad_env" / "args.json").write_text(json.dumps({**args, "env_id": "NoSuchEnv-v0"}))
    return root


BAD = {"not_a_run": "not a run folder", "truncated": "cannot read checkpoint", "no_ckpt": "no checkpoint.pt",
       "bad_env": "cannot build the environment"}


@pytest.fixture(scope="session")
def evaluated(trained_runs, tiny_clip, tiny_sd):
    """eval_videos.py on every folder of runs/ (a glob, as the shell would pass it quoted) with both scores."""
    start = time.perf_counter()
    proc = run_script("eval_videos.py", "runs/*", "--out", "eval", "--episodes", str(EPISODES), "--seed",
                      str(EVAL_SEED), "--prompt", PROMPT, "--clip-model-id", str(tiny_clip), "--sds-model-id",
                      str(tiny_sd), "--batch-size", "16", "--device", "cpu", "--threads", "1", "--no-progress",
                      cwd=trained_runs, timeout=300)
    print(f"eval_videos.py took {time.perf_counter() - start:.1f} s")
    return trained_runs / "eval", proc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_files_exist_and_videos_decode(evaluated):
    import imageio.v2 as imageio

    out, _ = evaluated
    for name in ("summary.csv", "summary.md", "runs.csv", "learning_curves.png", "final_metrics.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("learning_curves.png", "final_metrics.png"):
        assert imageio.imread(out / name).ndim == 3
    for name in GOOD:
        with imageio.get_reader(out / "runs" / f"{name}.mp4") as reader:
            frames = [f for f in reader]
        assert len(frames) == EPISODE_STEPS + 1  # the reset frame and one per step of the first episode
        assert frames[0].shape == (500, 500, 3)  # Pendulum renders at its own size
        sheet = imageio.imread(out / "runs" / f"{name}.png")
        assert sheet.shape == (2 * 504, 4 * 504, 3)  # 8 frames with 2-pixel borders, 4 per row
        metrics = json.loads((out / "runs" / f"{name}.json").read_text())
        assert metrics["episodes"] == EPISODES and metrics["video_frames"] == EPISODE_STEPS + 1
        assert metrics["steps"] == 200
        for key in ("clip_score", "sds_score", "sds_align", "sds_recon"):
            assert np.isfinite(metrics[key]), key
        assert -1.0 <= metrics["clip_score"] <= 1.0
    for name in BAD:
        assert not (out / "runs" / f"{name}.mp4").exists()


def test_env_return_matches_an_independent_rollout(evaluated, trained_runs):
    """Same actor, same seeds, rolled out here with plain gymnasium: the reported returns are exactly these."""
    import sac_env_reward

    out, _ = evaluated
    for name in GOOD:
        actor, _ = sac_env_reward.load_actor(trained_runs / "runs" / name)
        env = gym.make("Pendulum-v1", max_episode_steps=EPISODE_STEPS)
        returns = []
        for ep in range(EPISODES):
            obs, _ = env.reset(seed=EVAL_SEED + ep)
            total, done = 0.0, False
            while not done:
                with torch.no_grad():
                    _, _, mean_action = actor.get_action(torch.as_tensor(obs, dtype=torch.float32)[None])
                obs, r, terminated, truncated, _ = env.step(mean_action[0].numpy())
                total += float(r)
                done = terminated or truncated
            returns.append(total)
        metrics = json.loads((out / "runs" / f"{name}.json").read_text())
        assert metrics["returns"] == pytest.approx(returns, rel=1e-6, abs=1e-6), name
        assert metrics["env_return"] == pytest.approx(np.mean(returns), rel=1e-6, abs=1e-6)
        assert metrics["env_return_std"] == pytest.approx(np.std(returns), rel=1e-6, abs=1e-6)


def test_summary_groups_seeds(evaluated):
    out, _ = evaluated
    per_run = {r["run"]: r for r in read_csv(out / "runs.csv")}
    rows = read_csv(out / "summary.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["env_id"], r["prompt"], r["reward_source"], int(r["seeds"])) for r in ok] == [
        ("Pendulum-v1", PROMPT, "sds", 2), ("Pendulum-v1", PROMPT, "clip", 1), ("Pendulum-v1", PROMPT, "env", 2)]
    for row in ok:
        members = row["runs"].split()
        assert sorted(members) == sorted(n for n, (s, _) in GOOD.items() if s == row["reward_source"])
        assert sorted(int(s) for s in row["seed_list"].split()) == sorted(GOOD[n][1] for n in members)
        for metric in ("env_return", "clip_score", "sds_score"):
            values = [float(per_run[n][metric]) for n in members]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), rel=1e-6)
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values), rel=1e-6, abs=1e-9)
    md = (out / "summary.md").read_text()
    assert md.count(f"| Pendulum-v1 | {PROMPT} |") == 3


def test_bad_runs_are_skipped_and_listed(evaluated):
    out, proc = evaluated
    assert proc.returncode == 0
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(BAD), proc.stderr
    for name, reason in BAD.items():
        assert sum(f"runs/{name}:" in line and reason in line for line in skipped) == 1, (name, skipped)
    assert "Traceback" not in proc.stderr
    failed = {Path(r["runs"]).name: r["error"] for r in read_csv(out / "summary.csv") if r["status"] == "failed"}
    assert set(failed) == set(BAD) and all(reason in failed[n] for n, reason in BAD.items())
    md = (out / "summary.md").read_text()
    assert all(f"`runs/{name}`" in md for name in BAD)
    assert "evaluated 5 run(s), 4 failed" in proc.stdout


def test_exit_status_when_nothing_could_be_evaluated(trained_runs, tmp_path):
    bad = [str(trained_runs / "runs" / name) for name in BAD] + [str(tmp_path / "missing_*")]
    proc = run_script("eval_videos.py", *bad, "--out", str(tmp_path / "eval"), "--clip-model-id", "None",
                      "--no-progress", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("skipped ")]) == len(BAD) + 1, proc.stderr
    assert lines[-1].startswith("error: none of the 5 run(s) could be evaluated")
    assert "Traceback" not in proc.stderr
    assert {r["status"] for r in read_csv(tmp_path / "eval" / "summary.csv")} == {"failed"}


def test_runs_without_a_prompt_get_no_text_score(trained_runs, tmp_path):
    """Without --prompt an env-reward run has no CLIP score (and no model is loaded for it); one episode."""
    proc = run_script("eval_videos.py", str(trained_runs / "runs" / "env_s1"), "--out", str(tmp_path / "e"),
                      "--episodes", "1", "--clip-model-id", str(tmp_path / "no-such-clip"), "--no-progress",
                      cwd=tmp_path, timeout=120)
    metrics = json.loads((tmp_path / "e" / "runs" / "env_s1.json").read_text())
    assert "clip_score" not in metrics and metrics["episodes"] == 1
    assert "evaluated 1 run(s)" in proc.stdout


def test_a_scoring_model_that_does_not_load_stops_before_any_rollout(trained_runs, tmp_path):
    proc = run_script("eval_videos.py", str(trained_runs / "runs" / "env_s1"), "--out", str(tmp_path / "e"),
                      "--prompt", PROMPT, "--clip-model-id", str(tmp_path / "no-such-clip"), "--no-progress",
                      cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --clip-model-id") and "no such folder" in lines[0], lines
    assert not (tmp_path / "e" / "runs").exists()


def test_one_error_type_for_every_script_it_calls(tmp_path, tiny_clip, monkeypatch, capsys):
    """eval_videos.UserError is the class of the SAC core and of sac_sds.py; sac_clip.py's own class (a CLIP
    reward that cannot be built: here an image processor resampling with a filter it does not take) comes out as it,
    and main() turns it into one error line, exit status 2."""
    import eval_videos
    import sac_clip
    import sac_sds

    assert eval_videos.UserError is eval_videos.core.UserError is sac_sds.UserError
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text(json.dumps({"env_id": "Pendulum-v1", "exp_name": "sac_clip",
                                                            "prompt": PROMPT}))
    run = eval_videos.read_run(str(tmp_path / "run"), None)
    clip = eval_videos.ClipScorer(str(tiny_clip), torch.device("cpu"), "fp32")
    clip.image_processor.resample = 1  # PIL's LANCZOS
    frames = np.zeros((2, 24, 24, 3), np.uint8)
    with pytest.raises(eval_videos.UserError, match="resample=1") as e:
        clip(frames, run, 2)
    assert not isinstance(e.value, sac_clip.UserError)

    def fails(args):
        clip(frames, run, 2)

    monkeypatch.setattr(eval_videos, "run_evaluation", fails)
    monkeypatch.setattr(sys, "argv", ["eval_videos.py", str(tmp_path / "run")])
    capsys.readouterr()  # (the CLIP model's loading bars)
    with pytest.raises(SystemExit) as exit_:
        eval_videos.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: image processor resample=1")


def test_importable_without_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import eval_videos

    assert not any(tmp_path.iterdir())
    assert callable(eval_videos.main) and eval_videos.EvalArgs().out == "eval"


def test_composed_and_scheduled_runs_are_scored_on_their_own_prompts(tmp_path, tiny_sd, tiny_clip):
    """A schedule run's frames are scored on the entry of their step (frame j >= 1 is the frame after step j,
    episode_step j in training; frame 0, the reset frame, on the first entry); a composition run on its weights.
    Checked against single-prompt SDSReward and CLIPReward with the scorer's own noise."""
    import eval_videos
    import sac_clip
    import sac_sds

    def run_folder(name, **args):
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text(json.dumps({"env_id": "Pendulum-v1", "exp_name": "sac_sds", **args}))
        return eval_videos.read_run(str(tmp_path / name), None)

    other = "a pendulum hanging down"
    scheduled = run_folder("sched", prompt=[], prompt_weight=[], prompt_schedule=f"0:{PROMPT};2:{other}")
    assert scheduled.prompt == (PROMPT, other) and scheduled.starts == (0, 2)
    assert scheduled.prompt_text == f"0:{PROMPT};2:{other}"
    assert list(scheduled.entries(6)) == [0, 0, 0, 1, 1, 1]  # frames: reset, after steps 1, 2 (s = 0, 1), 3, ...
    composed = run_folder("comp", prompt=[PROMPT, other], prompt_weight=[1.0, -0.5])
    assert composed.weights == (1.0, -0.5) and composed.prompt_text == f"{PROMPT} | {other} (x-0.5)"
    assert run_folder("old", prompt=PROMPT).text == ((PROMPT,), (), ())  # args.json from before composition

    frames = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    args = eval_videos.EvalArgs(sds_model_id=str(tiny_sd), batch_size=4, seed=7)
    scorer = eval_videos.SdsScorer(args, torch.device("cpu"))
    got = scorer(frames, scheduled)["sds_score"]
    g = torch.Generator().manual_seed(7)  # the labeler's draws: t for the episode, then the noise of its 6 frames
    t = int(torch.randint(400, 500, (1,), generator=g))
    noise = torch.randn(6, 4, 8, 8, generator=g)
    single = {p: sac_sds.SDSReward.from_pretrained(str(tiny_sd), p) for p in (PROMPT, other)}
    expected = [single[PROMPT if k == 0 else other](single[PROMPT].encode(frames[j:j + 1]), t, noise[j:j + 1]).item()
                for j, k in enumerate(scheduled.entries(6))]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    scorer.reset()
    composed_score = scorer(frames, composed)["sds_score"]
    model = sac_sds.SDSReward.from_pretrained(str(tiny_sd), [PROMPT, other], weights=[1.0, -0.5])
    np.testing.assert_allclose(composed_score, model(model.encode(frames), t, noise).numpy(), rtol=1e-4, atol=1e-4)

    clip = eval_videos.ClipScorer(str(tiny_clip), torch.device("cpu"), "fp32")
    cosines = {p: sac_clip.CLIPReward.from_pretrained(str(tiny_clip), [p])(frames).numpy() for p in (PROMPT, other)}
    expected = [cosines[PROMPT if k == 0 else other][j] for j, k in enumerate(scheduled.entries(6))]
    np.testing.assert_allclose(clip(frames, scheduled, 4), expected, atol=1e-5)


def test_ctrl_c_keeps_the_runs_evaluated_before_it(trained_runs, tmp_path, monkeypatch):
    """Ctrl-C during the second run: the first run's files and the tables (the rest listed as not evaluated) are
    written, then Interrupted with exit status 130 (main prints its one line)."""
    import eval_videos

    real, calls = eval_videos.evaluate_run, []

    def evaluate_run(run, *a, **kw):
        calls.append(run.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # where a Ctrl-C lands: inside a rollout
        return real(run, *a, **kw)

    monkeypatch.setattr(eval_videos, "evaluate_run", evaluate_run)
    out = tmp_path / "e"
    args = eval_videos.EvalArgs(runs=tuple(str(trained_runs / "runs" / n) for n in ("env_s1", "env_s2")),
                                out=str(out), episodes=1, clip_model_id=None, progress=False, threads=1)
    with pytest.raises(eval_videos.core.Interrupted) as stop:
        eval_videos.run_evaluation(args)
    assert stop.value.code == 130 and "Ctrl-C during run 2 of 2: the 1 evaluated before it" in str(stop.value)
    assert (out / "runs" / "env_s1.json").is_file() and not (out / "runs" / "env_s2.json").exists()
    rows = {r["run"]: r for r in read_csv(out / "runs.csv")}
    assert "stopped by Ctrl-C" in rows["env_s2"]["error"] and not rows["env_s1"]["error"], rows
