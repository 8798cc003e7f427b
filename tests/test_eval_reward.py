"""eval_reward.py: policy snapshots (--save-policy-every), rewards scored as training scores them, the statistics
against independent computations, the Pendulum and motion worlds' known answers, bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_reward
import sac_env_reward as core
import sac_sds
from conftest import LADDER_GROUP, ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
import pendulum_world  # noqa: E402  (the clip renderer and the random-weights copies)

UP, DOWN = "a pendulum pointing up", "a pendulum pointing down"
SD, CLIP = str(ROOT / "demo" / "pendulum-sd"), str(ROOT / "demo" / "pendulum-clip")
MOTION, ADAPTER = str(ROOT / "demo" / "pendulum-motion"), str(ROOT / "demo" / "pendulum-motion-adapter")


def short_run(root: Path, every: int = 200) -> Path:
    """A 400-step Pendulum run (200 random steps) with a snapshot every `every` steps, trained in this process."""
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = core.Args(env_id="Pendulum-v1", total_timesteps=400, learning_starts=200, batch_size=64, eval_every=0,
                         eval_episodes=1, progress=False, log_every=100, buffer_size=10_000, run_name="short",
                         threads=1, save_policy_every=every)
        args, run_dir = core.prepare_run(args, core.Args)
        core.train(args, run_dir, core.build_reward)
    finally:
        os.chdir(cwd)
    return root / "runs" / "short"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_snapshots_are_written_weights_only_and_scored(tmp_path, one_thread):
    """--save-policy-every 200: policies/step_200.pt and step_400.pt, tensors only (read with weights_only=True), the
    last one the checkpoint's actor; eval_reward.py plays each snapshot and the random policy, and its numbers agree
    with independent computations: the random policy's env return, the CLIP reward of its frames (deterministic),
    the SDS reward of its first episode from the labeler's generator, Spearman and Pearson."""
    run = short_run(tmp_path)
    files = sorted(p.name for p in (run / "policies").iterdir())
    assert files == ["step_200.pt", "step_400.pt"]
    snap = torch.load(run / "policies" / "step_400.pt", weights_only=True)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["sac"]
    assert set(snap) == {k[len("actor."):] for k in ckpt if k.startswith("actor.")}
    for k, v in snap.items():
        assert torch.equal(v, ckpt[f"actor.{k}"]), k
    early = core.load_policy(run / "policies" / "step_200.pt")
    assert not torch.equal(early.head.weight, snap["head.weight"])  # the ladder's rungs differ

    out = tmp_path / "er"
    args = eval_reward.Args(behaviours=("random", str(run)), env_id="Pendulum-v1", episodes=2, max_episode_steps=30,
                            sds_model_id=(SD,), clip_model_id=(CLIP,), prompt=(UP,), seed=7, bootstrap=200,
                            out=str(out), device="cpu", progress=False, threads=1)
    summary = eval_reward.evaluate(args)
    assert summary["behaviours"] == ["random", "short:200", "short:400"]
    episodes = read_csv(out / "episodes.csv")
    assert len(episodes) == 6 and all(int(e["steps"]) == 30 for e in episodes)

    # the random policy: actions from the env's action space seeded as the episode
    env = core.make_env(core.SACArgs(env_id="Pendulum-v1", max_episode_steps=30, render_size=32), render=True)
    obs, _ = env.reset(seed=7)
    env.action_space.seed(7)
    frames, ret, done = [], 0.0, False
    while not done:
        _, r, term, trunc, _ = env.step(env.action_space.sample())
        frames.append(env.render())
        ret, done = ret + r, term or trunc
    env.close()
    assert float(episodes[0]["env_return"]) == pytest.approx(ret, rel=1e-9)
    frames = np.stack(frames)
    # CLIP: the reward model of sac_clip.py on the same frames
    import sac_clip

    clip = sac_clip.CLIPReward.from_pretrained(CLIP, [UP], dtype="fp32", device="cpu")
    with torch.no_grad():
        expected = clip(frames).numpy()
    assert float(episodes[0][f"clip {CLIP} | {UP} | sum"]) == pytest.approx(float(expected.sum()), abs=1e-3)
    # SDS: one noise level for the episode, then one noise per frame, from a generator seeded --seed, as the labeler
    sds = sac_sds.SDSReward.from_pretrained(SD, UP, align_scale=0.0, device="cpu")
    g = torch.Generator().manual_seed(7)
    t = int(torch.randint(700, 900, (1,), generator=g))
    noise = torch.randn((30, *sds.latent_shape), generator=g)
    expected = sds(sds.encode(frames), t, noise).numpy()
    assert float(episodes[0][f"sds {SD} | {UP} | sum"]) == pytest.approx(float(expected.sum()), abs=1e-3)

    # the statistics, recomputed here (no ties: the ranks by double argsort)
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["reward"], r["prompt"]) for r in rows["rows"]] == [(f"sds {SD}", UP), (f"clip {CLIP}", UP)]
    returns = np.array([float(e["env_return"]) for e in episodes])
    for row in rows["rows"]:
        sums = np.array([float(e[f"{row['reward']} | {UP} | sum"]) for e in episodes])
        rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        assert row["spearman"] == pytest.approx(np.corrcoef(rank(sums), rank(returns))[0, 1], abs=1e-9)
        lo, hi = row["spearman_ci"]
        assert -1 <= lo <= hi <= 1 and row["episodes"] == 6
        means = {b: np.mean([float(e[f"{row['reward']} | {UP} | mean"]) for e in episodes if e["behaviour"] == b])
                 for b in rows["behaviours"]}
        assert row["mean_reward"] == pytest.approx(means, abs=1e-9)
        assert row["frames_per_s"] > 0
    for name in ("summary.md", "summary.csv", "scatter.png", "correlations.png"):
        assert (out / name).stat().st_size > 100, name


def test_statistics_against_known_values():
    """ranks with ties, Spearman and Pearson on hand-made data."""
    np.testing.assert_array_equal(eval_reward.ranks([3.0, 1.0, 3.0, 2.0]), [2.5, 0.0, 2.5, 1.0])
    assert eval_reward.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert eval_reward.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert eval_reward.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1])
    assert eval_reward.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert eval_reward.auc_of(np.array([3.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(0.875)
    # the AUC's interval: every resample of separated sets is 1; of overlapping ones it spans the point estimate
    assert eval_reward.auc_ci(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0]), 200, 0) == [1.0, 1.0]
    a, b = np.random.default_rng(0).normal(0.5, 1, 40), np.random.default_rng(1).normal(0, 1, 40)
    lo, hi = eval_reward.auc_ci(a, b, 500, 0)
    assert lo < eval_reward.auc_of(a, b) < hi and 0.05 < hi - lo < 0.5


@pytest.mark.heavy
@pytest.mark.xdist_group(LADDER_GROUP)
def test_known_answers_pendulum_world(pendulum_ladder, tmp_path):
    """Over the ladder of one env-reward run (random actions, snapshots at 1000..6000 steps), the shipped models'
    "pointing up" correlates positively with the env's return and "pointing down" negatively; the same architectures
    with random weights do not tell the two prompts apart (docs/reward-eval.md: the random CLIP ranks by the frames,
    with both prompts alike, so its correlations are not near zero)."""
    run, _ = pendulum_ladder
    models = tmp_path / "models"
    rand_sd = pendulum_world.random_weights(SD, models / "random-sd")
    rand_clip = pendulum_world.random_weights(CLIP, models / "random-clip")
    out = tmp_path / "er"
    args = eval_reward.Args(behaviours=("random", str(run)), env_id="Pendulum-v1", episodes=2, max_episode_steps=100,
                            sds_model_id=(SD, str(rand_sd)), clip_model_id=(CLIP, str(rand_clip)), prompt=(UP, DOWN),
                            out=str(out), device="cpu", progress=False, threads=1)
    summary = eval_reward.evaluate(args)
    sp = {(r["reward"].split()[0] + (" random" if "random-" in r["reward"] else ""), r["prompt"]): r["spearman"]
          for r in summary["rows"]}
    print(json.dumps({f"{k[0]} | {k[1]}": round(v, 3) for k, v in sp.items()}))
    assert all(r["episodes"] == 14 for r in summary["rows"])
    for kind in ("sds", "clip"):
        assert sp[(kind, UP)] > 0.5 and sp[(kind, DOWN)] < -0.5, sp
        assert sp[(kind, UP)] - sp[(kind, DOWN)] > 1.2, sp
        assert abs(sp[(f"{kind} random", UP)] - sp[(f"{kind} random", DOWN)]) < 0.4, sp
    assert abs(sp[("sds random", UP)]) < 0.6 and abs(sp[("sds random", DOWN)]) < 0.6, sp


def test_known_answer_motion_world(tmp_path):
    """The motion world: the video reward for "spinning clockwise" ranks spinning clips above the same clips frozen
    at their first frame, the image control (the same pipeline without the adapter) hardly does."""
    clips = tmp_path / "clips"
    pendulum_world.reward_clips(pendulum_world.Args(clips=24, clip_steps=32, out=str(clips)))
    out = tmp_path / "er"
    args = eval_reward.Args(behaviours=(str(clips / "spinning"), str(clips / "frozen"), str(clips / "resting")),
                            env_id="Pendulum-v1", sds_model_id=(f"{MOTION} --motion-adapter-id {ADAPTER}", MOTION),
                            prompt=("a pendulum spinning clockwise",), out=str(out), device="cpu", progress=False,
                            threads=1)
    summary = eval_reward.evaluate(args)
    video, image = summary["rows"]
    assert "--motion-adapter-id" in video["reward"] and "--motion-adapter-id" not in image["reward"]
    assert video["episodes"] == 0 and np.isnan(video["spearman"])  # clips have no env return
    pair = "clips:spinning > clips:frozen"
    print(json.dumps({r["reward"]: r["auc"] for r in summary["rows"]}))
    assert video["auc"][pair] > 0.75 and video["auc"][pair] > image["auc"][pair] + 0.15, (video["auc"], image["auc"])
    assert video["auc"]["clips:spinning > clips:resting"] > 0.9
    assert "AUC" in (out / "summary.md").read_text()


# ----- bad input: one line naming the problem and the fix, exit status 2, nothing written -----
@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "no_snapshots").mkdir()
    (root / "no_snapshots" / "args.json").write_text(json.dumps({"env_id": "Pendulum-v1"}))
    (root / "hopper" / "policies").mkdir(parents=True)
    (root / "hopper" / "args.json").write_text(json.dumps({"env_id": "Hopper-v4"}))
    (root / "hopper" / "policies" / "step_100.pt").write_bytes(b"not read: the env is checked first")
    (root / "empty_clips" / "clip0").mkdir(parents=True)
    (root / "evil" / "policies").mkdir(parents=True)
    (root / "evil" / "args.json").write_text(json.dumps({"env_id": "Pendulum-v1"}))
    import argparse

    torch.save(argparse.Namespace(code="a pickled object"), root / "evil" / "policies" / "step_100.pt")
    (root / "broken_model").mkdir()
    (root / "broken_model" / "config.json").write_text("{ not json")
    return root


@pytest.mark.parametrize("behaviours,rewards,message", [
    (["no_snapshots"], ["--clip-model-id", CLIP], "no policy snapshots (policies/step_N.pt); train it with "
                                                  "--save-policy-every"),
    (["hopper"], ["--clip-model-id", CLIP], "trained on Hopper-v4, not --env-id Pendulum-v1"),
    (["empty_clips"], ["--clip-model-id", CLIP], "no clips in the folder"),
    (["evil"], ["--clip-model-id", CLIP], "holds pickled Python objects"),  # never unpickled (weights_only=True)
    (["random"], ["--clip-model-id", "broken_model"], "broken_model"),
    (["random"], ["--sds-model-id", "missing_model"], "missing_model"),
    (["random"], ["--sds-model-id", f"{SD} --no-such-flag 3"], "flags that sac_sds.py does not take"),
    (["random"], [], "no reward given"),
])
def test_bad_input_in_process(bad_folders, behaviours, rewards, message, monkeypatch):
    """Each problem is a UserError naming it, raised before anything is written."""
    import tyro

    monkeypatch.chdir(bad_folders)
    args = tyro.cli(eval_reward.Args, args=[*behaviours, "--env-id", "Pendulum-v1", *rewards, "--prompt", UP,
                                            "--out", "out", "--no-progress", "--device", "cpu"])
    with pytest.raises(eval_reward.UserError) as e:
        eval_reward.evaluate(args)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (bad_folders / "out").exists()


def test_bad_input_exits_2_with_one_line(bad_folders):
    proc = run_script("eval_reward.py", "no_snapshots", "--env-id", "Pendulum-v1", "--clip-model-id", CLIP,
                      "--prompt", UP, "--out", "out", cwd=bad_folders, check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "--save-policy-every" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (bad_folders / "out").exists()


def test_ctrl_c_writes_the_tables_of_the_episodes_scored(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) during the second episode: it is finished and scored, the tables of the two are written and
    marked incomplete, then Interrupted with exit status 130; the signal handlers are restored."""
    import os
    import signal

    real, calls = eval_reward.core.label_episode, []

    def label_episode(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(eval_reward.core, "label_episode", label_episode)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "er"
    args = eval_reward.Args(behaviours=("random",), env_id="Pendulum-v1", episodes=4, max_episode_steps=10,
                            clip_model_id=(CLIP,), prompt=(UP,), bootstrap=10, out=str(out), device="cpu",
                            progress=False, threads=1)
    with pytest.raises(eval_reward.core.Interrupted) as stop:
        eval_reward.evaluate(args)
    assert stop.value.code == 130 and "after 2 of 4 episodes" in str(stop.value)
    assert len(read_csv(out / "episodes.csv")) == 2 and len(calls) == 2
    assert "after 2 of 4 episodes" in json.loads((out / "summary.json").read_text())["stopped"]
    assert "Incomplete" in (out / "summary.md").read_text()
    assert signal.getsignal(signal.SIGINT) is handler
