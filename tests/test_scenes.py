"""--scene and --protocol (docs/method.md#scenes, docs/method.md#tadpoles-protocol): how much of each frame the body
fills, the natural ground and sky, the frames of env.render() itself, the camera override, envs without a preset,
several envs in one process; TADPoLe's fixed starts, episode lengths and action repeat; the flags through args.json
and eval_videos.py; bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import sac_env_reward as sac
from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
import framing  # noqa: E402


def frames_of(env_id: str, steps: int = 3, seed: int = 0, size: int = 64, **fields) -> np.ndarray:
    env = sac.make_env(sac.SACArgs(env_id=env_id, render_size=size, **fields), render=True)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(steps):
        env.step(env.action_space.sample())
        frames.append(env.render())
    env.close()
    return np.stack(frames)


# ----- framing: the body fills the frame (the benchmark's measurement, on a shorter episode) -----
@pytest.mark.parametrize("env_id", framing.ENVS)
def test_natural_scene_frames_the_body(env_id, one_thread):
    fractions, _, steps = framing.framing(env_id, {"scene": "natural"}, size=96, steps=24, every=4, seed=0)
    assert np.median(fractions) >= 0.06 and fractions.min() >= 0.02, (steps, fractions.round(3))


def test_the_measurement_sees_the_stock_scene_leave_the_walker_small():
    stock = framing.framing("Walker2d-v4", {"scene": "stock"}, size=96, steps=12, every=4, seed=0)[0]
    assert 0 < np.median(stock) < 0.02  # the stock camera: about 1.3%


# ----- what the frames show -----
def test_natural_ground_is_green_grass_and_the_sky_blue_no_checkerboard():
    stock, natural = (frames_of("Walker2d-v4", scene=s, size=96)[0].astype(float) for s in ("stock", "natural"))
    ground, sky = natural[-20:].reshape(-1, 3), natural[:8].reshape(-1, 3)
    assert (ground[:, 1] > ground[:, 0] + 20).mean() > 0.75 and (ground[:, 1] > ground[:, 2] + 20).mean() > 0.75
    blue, cloud = sky[:, 2] > sky[:, 0] + 20, (sky.min(1) > 190) & (sky[:, 2] >= sky[:, 0])
    assert (blue | cloud).all() and blue.mean() > 0.3
    dark = lambda f: (f[-20:].max(-1) < 40).mean()  # the stock checkerboard's black squares  # noqa: E731
    assert dark(stock) > 0.2 and dark(natural) < 0.05  # (the walker's feet and shadow)


def test_natural_floor_reflects_nothing():
    env = sac.make_env(sac.SACArgs(env_id="Hopper-v4", scene="natural"), render=True)
    model = env.unwrapped.model
    floor = model.geom_matid[model.geom("floor").id]
    assert model.mat_reflectance[floor] == 0
    env.close()


def test_pendulum_and_envs_without_a_preset_render_as_before(capsys):
    assert np.array_equal(frames_of("Pendulum-v1", scene="natural"), frames_of("Pendulum-v1", scene="stock"))
    stock = frames_of("Swimmer-v4", scene="stock")
    natural, again = frames_of("Swimmer-v4", scene="natural"), frames_of("Swimmer-v4", scene="natural")
    assert np.array_equal(natural, stock) and np.array_equal(again, stock)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: --scene natural has no preset for Swimmer-v4; it is rendered in its stock scene"]


def test_camera_flag_overrides_the_scenes_camera():
    """--camera keeps the env's own camera; the ground and sky still change."""
    stock = frames_of("Walker2d-v4", scene="stock", camera="track")
    natural = frames_of("Walker2d-v4", scene="natural", camera="track")
    preset = frames_of("Walker2d-v4", scene="natural")
    assert not np.array_equal(stock, natural) and not np.array_equal(natural, preset)
    env = sac.make_env(sac.SACArgs(env_id="Walker2d-v4", scene="natural", camera="track"), render=True)
    stock_env = sac.make_env(sac.SACArgs(env_id="Walker2d-v4", camera="track"), render=True)
    assert np.allclose(env.unwrapped.model.cam_poscom0, stock_env.unwrapped.model.cam_poscom0)
    env.close(), stock_env.close()


def test_envs_in_one_process_keep_their_own_frames():
    """gymnasium's renderer draws in the OpenGL context made last: the core makes each env's own current."""
    first = sac.make_env(sac.SACArgs(env_id="Hopper-v4", render_size=64), render=True)
    first.reset(seed=0)
    before = first.render()
    other = sac.make_env(sac.SACArgs(env_id="Hopper-v4", render_size=64, scene="natural"), render=True)
    other.reset(seed=0)
    other.render()
    assert np.array_equal(first.render(), before)
    other.close()
    assert np.array_equal(first.render(), before)  # also after the other env's context is freed
    first.close()


@pytest.mark.parametrize("scene", ["stock", "natural"])
def test_dm_control_renders_frames_larger_than_its_offscreen_buffer(scene):
    """The dm_control humanoid's buffer is 480 px; SD 2.1's frames are 512."""
    assert frames_of("dm_control/humanoid-stand-v0", steps=0, size=512, scene=scene).shape == (1, 512, 512, 3)


def test_dm_control_natural_scene_changes_camera_zero_only():
    frames = frames_of("dm_control/cheetah-run-v0", scene="natural", size=64)
    ground = frames[0, -10:].reshape(-1, 3).astype(float)
    assert (ground[:, 1] > ground[:, 2] + 20).mean() > 0.9  # grass (the stock floor is blue)
    other = frames_of("dm_control/cheetah-run-v0", scene="stock", camera="1")
    assert np.array_equal(frames_of("dm_control/cheetah-run-v0", scene="stock", camera="1"), other)


# ----- TADPoLe's protocol -----
def start_state(env_id: str, seed: int, protocol: str):
    env = sac.make_env(sac.SACArgs(env_id=env_id, protocol=protocol))
    env.reset(seed=seed)
    physics = env.unwrapped._env.physics
    state = physics.data.qpos.copy(), physics.data.qvel.copy(), physics.data.act.copy()
    env.close()
    return state


@pytest.mark.parametrize("env_id", ["dm_control/humanoid-stand-v0", "dm_control/dog-stand-v0"])
def test_tadpole_starts_every_episode_alike(env_id):
    one, two = start_state(env_id, 1, "tadpole"), start_state(env_id, 2, "tadpole")
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    stock_one, stock_two = start_state(env_id, 1, "stock"), start_state(env_id, 2, "stock")
    assert not np.array_equal(stock_one[0], stock_two[0])  # the stock start is random
    if "humanoid" in env_id:
        env = sac.make_env(sac.SACArgs(env_id=env_id))
        assert np.array_equal(one[0], env.unwrapped._env.physics.model.qpos0)  # the XML's standing pose
    else:  # heading 4.4 rad, root velocities 0, actuators mid-range
        assert np.allclose(one[0][3:7], [np.cos(2.2), 0, 0, np.sin(2.2)])
        assert np.all(one[1][[0, 1, 5]] == 0) and np.all(one[2] == 0)


@pytest.mark.parametrize("env_id", ["dm_control/humanoid-walk-v0", "dm_control/dog-walk-v0"])
def test_tadpole_episodes_are_150_agent_steps(env_id):
    env = sac.make_env(sac.SACArgs(env_id=env_id, protocol="tadpole"))
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert steps == 150 and truncated and not terminated
    env.close()


def test_action_repeat_sums_the_rewards_and_shows_the_frame_after_the_last():
    """One step under --protocol tadpole (repeat 2) = two steps of the same env with --action-repeat 1."""
    fields = dict(env_id="dm_control/humanoid-stand-v0", protocol="tadpole", render_size=48)
    twice = sac.make_env(sac.SACArgs(**fields), render=True)
    once = sac.make_env(sac.SACArgs(**fields, action_repeat=1), render=True)
    action = np.full(twice.action_space.shape, 0.3, np.float32)
    twice.reset(seed=0), once.reset(seed=0)
    obs, reward, *_ = twice.step(action)
    first, second = once.step(action), once.step(action)
    assert reward == pytest.approx(first[1] + second[1]) and reward > 0
    assert np.array_equal(obs, second[0]) and np.array_equal(twice.render(), once.render())
    twice.close(), once.close()


def test_tadpole_frame_sizes_and_time_per_agent_step():
    import sac_sds

    for env_id, size in (("dm_control/humanoid-stand-v0", 480), ("dm_control/dog-walk-v0", 512)):
        args = sac.SACArgs(env_id=env_id, protocol="tadpole")
        assert sac.protocol_render_size(args) == size
    args = sac_sds.Args(env_id="dm_control/humanoid-walk-v0", protocol="tadpole")
    assert sac_sds.video_frame_stride(args) == (1, pytest.approx(0.05))  # consecutive agent steps of 2 x 0.025 s
    assert sac_sds.video_frame_stride(sac_sds.Args(env_id="dm_control/humanoid-walk-v0", video_fps=8))[0] == 5  # stock


# ----- the flags through the run folder, and bad input -----
def test_scene_and_protocol_reach_args_json_and_eval_videos(in_tmp):
    run_script("sac_env_reward.py", "--env-id", "dm_control/cheetah-run-v0", "--scene", "natural",
               "--total-timesteps", "60", "--learning-starts", "30", "--batch-size", "16", "--eval-every", "0",
               "--eval-episodes", "1", "--max-episode-steps", "20", "--action-repeat", "3", "--render-size", "48",
               "--run-name", "n", "--no-progress", "--threads", "1", cwd=in_tmp)
    saved = json.loads((in_tmp / "runs" / "n" / "args.json").read_text())
    assert saved["scene"] == "natural" and saved["protocol"] == "stock" and saved["action_repeat"] == 3
    run_script("eval_videos.py", "runs/n", "--episodes", "1", "--clip-model-id", "None", "--out", "ev",
               "--no-progress", cwd=in_tmp)
    import imageio.v3 as iio

    sheet = iio.imread(in_tmp / "ev" / "runs" / "n.png").astype(float)
    ground = sheet[-12:-4].reshape(-1, 3)
    assert (ground[:, 1] > ground[:, 2] + 20).mean() > 0.5  # the natural grass, not the stock blue floor
    metrics = json.loads((in_tmp / "ev" / "runs" / "n.json").read_text())
    assert metrics["episode_length"] == 20 and "success" not in metrics


@pytest.mark.parametrize("argv,message", [
    (["--env-id", "Walker2d-v4", "--protocol", "tadpole"], "--protocol tadpole is TADPoLe's set-up"),
    (["--env-id", "metaworld/door-close-v3"], "requirements-metaworld.txt"),
    (["--env-id", "Pendulum-v1", "--action-repeat", "0"], "--action-repeat must be at least 1"),
    (["--env-id", "Pendulum-v1", "--success-bonus", "nan"], "--success-bonus must be a finite number"),
])
def test_bad_scene_or_protocol_input_is_one_line_and_writes_nothing(in_tmp, argv, message):
    proc = run_script("sac_env_reward.py", *argv, "--no-progress", cwd=in_tmp, check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and list(in_tmp.iterdir()) == []


def test_runs_made_before_the_scene_existed_resume_with_the_stock_scene_named(in_tmp):
    run_script("sac_env_reward.py", "--env-id", "Pendulum-v1", "--total-timesteps", "250", "--learning-starts", "100",
               "--batch-size", "16", "--eval-episodes", "0", "--run-name", "old", "--no-progress", cwd=in_tmp)
    path = in_tmp / "runs" / "old" / "args.json"
    saved = json.loads(path.read_text())
    del saved["scene"]
    path.write_text(json.dumps(saved))
    proc = run_script("sac_env_reward.py", "--resume", "runs/old", cwd=in_tmp, check=False, timeout=120)
    assert proc.returncode == 2 and '"scene": "stock"' in proc.stderr and "made before it" in proc.stderr


# ----- gymnasium's conventions: its own checker passes on every env the scripts build -----
@pytest.mark.parametrize("env_id, fields", [
    *[(env_id, {"scene": scene}) for env_id in ("Walker2d-v4", "Hopper-v5", "Pendulum-v1")
      for scene in ("stock", "natural")],
    ("Hopper-v5", {"scene": "stock", "time_feature": True, "action_repeat": 3}),  # every wrapper of ours
    ("dm_control/humanoid-stand-v0", {"scene": "stock", "protocol": "tadpole"}),
    ("dm_control/humanoid-stand-v0", {"scene": "natural", "protocol": "tadpole", "time_feature": True}),
])
def test_gymnasium_check_env_passes(env_id, fields):
    """gymnasium.utils.env_checker.check_env on the env make_env builds, rendering as the text rewards do: spaces,
    reset and step determinism, the frames, and env.spec, which needs every wrapper to record its constructor's
    arguments (RecordConstructorArgs) so that the spec can remake the env. Its render check is skipped only because it
    also opens a window for render_mode "human"; the frames are checked by the passive checker instead. The spec's
    remake repeats the wrappers, not the scene's edits of the model or TADPoLe's fixed start (the stock protocol's
    envs observe the same after a seeded reset)."""
    from gymnasium.utils.env_checker import check_env
    from gymnasium.utils.passive_env_checker import env_render_passive_checker

    env = sac.make_env(sac.SACArgs(env_id=env_id, render_size=32, **fields), render=True)
    check_env(env, skip_render_check=True)
    env_render_passive_checker(env)
    ours = [w.name for w in env.spec.additional_wrappers if w.entry_point.startswith("sac_env_reward:")]
    assert ours == [name for name, wanted in [("Frames", "Pendulum" not in env_id),
                                              ("ActionRepeat", "action_repeat" in fields or "protocol" in fields),
                                              ("TimeFeature", fields.get("time_feature", False))] if wanted]
    remade = env.spec.make()
    assert remade.observation_space == env.observation_space and remade.action_space == env.action_space
    if "protocol" not in fields:
        np.testing.assert_array_equal(remade.reset(seed=3)[0], env.reset(seed=3)[0])
    remade.close()
    env.close()
