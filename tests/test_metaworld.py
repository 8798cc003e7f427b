"""Meta-World (the extra, requirements-metaworld.txt, in its own virtual environment): env ids, TADPoLe's protocol,
upright frames, seeded starts, success logged in training, in summary.json and in eval_videos.py's tables.

These run where metaworld is installed; tests/test_metaworld_venv.py runs them in .venv-metaworld from the main
suite (CI makes that environment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

import mujoco  # noqa: E402

import sac_env_reward as sac  # noqa: E402
from conftest import run_script, scalars  # noqa: E402

TASK = "metaworld/door-close-v3"


def make(**fields):
    return sac.make_env(sac.SACArgs(env_id=TASK, **fields), render="render_size" in fields)


def test_tadpole_protocol_episodes_observations_and_fresh_positions():
    env = make(protocol="tadpole")
    starts = []
    for seed in (5, 5, 6):
        obs, _ = env.reset(seed=seed)
        starts.append(env.unwrapped.obj_init_pos.copy())
    assert obs.shape == (39,) and obs.dtype == np.float32 and np.all(obs[-3:] == 0)  # the goal is not observed
    assert np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[0], starts[2])  # seeded, fresh
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert steps == 200 and truncated and "success" in info  # 200 agent steps of 2 env steps
    stock = make()
    obs, _ = stock.reset(seed=5)
    assert not np.all(obs[-3:] == 0)  # Meta-World's own: the goal is observed


@pytest.mark.parametrize("fields", [{"protocol": "tadpole"}, {"camera": "corner"}, {"camera": "topview"}])
def test_frames_are_upright(fields):
    """In the frame env.render() returns, a point 0.3 m above the door handle appears above it. The camera's own
    image (MuJoCo's renderer through the same camera) is compared to find out whether the frame was turned."""
    env = make(render_size=96, **fields)
    env.reset(seed=0)
    frame = env.render().astype(float)
    inner = env.unwrapped
    camera = inner.mujoco_renderer.camera_id
    renderer = mujoco.Renderer(inner.model, 96, 96)
    renderer.update_scene(inner.data, camera=camera)
    raw = renderer.render().astype(float)
    renderer.close()
    turned = np.abs(frame - raw[::-1, ::-1]).mean() < np.abs(frame - raw).mean()

    position, axes = inner.data.cam_xpos[camera], inner.data.cam_xmat[camera].reshape(3, 3)

    def height_in_raw(point):  # image-up coordinate in the camera's own image: larger is higher up
        v = point - position
        return (v @ axes[:, 1]) / -(v @ axes[:, 2])

    handle = inner.obj_init_pos.copy()
    above = height_in_raw(handle + [0, 0, 0.3]) > height_in_raw(handle)
    assert above != turned  # a camera mounted upside down shows `above` inverted: only a turned frame is upright
    if fields.get("camera") == "topview":
        assert not turned  # a camera mounted upright is left alone


def test_training_logs_success_and_eval_videos_tabulates_it(in_tmp):
    run_script("sac_env_reward.py", "--env-id", TASK, "--protocol", "tadpole", "--max-episode-steps", "40",
               "--total-timesteps", "160", "--learning-starts", "80", "--batch-size", "16", "--eval-every", "0",
               "--eval-episodes", "2", "--success-bonus", "2", "--run-name", "mw", "--no-progress", "--threads", "1",
               cwd=in_tmp)
    run = in_tmp / "runs" / "mw"
    logged = scalars(run)
    assert {"charts/success", "charts/success_once", "charts/eval_success"} <= set(logged)
    assert len(logged["charts/success"]) == 4  # one per training episode of 40 steps
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_success"] in (0.0, 0.5, 1.0)
    run_script("eval_videos.py", "runs/mw", "--episodes", "2", "--clip-model-id", "None", "--out", "ev",
               "--no-progress", cwd=in_tmp)
    metrics = json.loads((in_tmp / "ev" / "runs" / "mw.json").read_text())
    assert metrics["episode_length"] == 40 and metrics["success"] in (0.0, 0.5, 1.0)
    assert "success" in (in_tmp / "ev" / "summary.md").read_text()


def test_unknown_task_is_one_line(in_tmp):
    proc = run_script("sac_env_reward.py", "--env-id", "metaworld/no-such-task-v3", "--no-progress", cwd=in_tmp,
                      check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "unknown environment id" in lines[0], proc.stderr
    assert list(in_tmp.iterdir()) == []
