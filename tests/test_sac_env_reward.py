"""sac_env_reward.py: end-to-end runs, termination vs truncation, checkpoints, resume, signals, determinism,
learning, bad input."""

from __future__ import annotations

import functools
import io
import json
import pickletools
import signal
import subprocess
import sys
import time
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch

import sac_env_reward as sac
from conftest import LADDER_GROUP, ROOT, run_script, scalars

QUICK = ["--learning-starts", "200", "--batch-size", "64", "--eval-every", "0", "--eval-episodes", "1",
         "--no-progress", "--log-every", "100"]


def quick_args(**overrides) -> sac.Args:
    base = dict(env_id="Pendulum-v1", total_timesteps=400, learning_starts=200, batch_size=64, eval_every=0,
                eval_episodes=1, progress=False, log_every=100, buffer_size=10_000, run_name="t", threads=1)
    base.update(overrides)
    return sac.Args(**base)


def train_in_process(args: sac.Args) -> tuple[dict, dict]:
    args, run_dir = sac.prepare_run(args, sac.Args)
    summary = sac.train(args, run_dir, sac.build_reward)
    return summary, torch.load(run_dir / "checkpoint.pt", weights_only=True)


# ----- a crafted episode: known observations, termination at a known step, truncation by the time limit -----
class Crafted(gym.Env):
    """obs = [episode index, step]; reward = step. Episode k terminates at step 3 when k is even; odd episodes
    run into the time limit (4 steps, truncation)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.episode, self.t = -1, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.episode % 2 == 0 and self.t == 3
        return np.array([self.episode, self.t], np.float32), float(self.t), terminated, False, {}


gym.register("Crafted-v0", entry_point=Crafted, max_episode_steps=4)


def test_termination_and_truncation_under_autoreset(in_tmp):
    """Buffer holds exactly the real transitions: the final observation (not the reset one) as next_obs,
    terminated only at termination, and no transition across the autoreset step."""
    _, ckpt = train_in_process(quick_args(env_id="Crafted-v0", total_timesteps=14, learning_starts=100))
    data = ckpt["replay_buffer"]["data"]
    obs, nxt, term, rew = data["obs"].numpy(), data["next_obs"].numpy(), data["terminated"][:, 0], data["reward"][:, 0]
    assert ckpt["global_step"] == 14 and len(obs) == 14  # 3 + 4 + 3 + 4 steps: episodes 0..3
    expected = [(e, s) for e, n in [(0, 3), (1, 4), (2, 3), (3, 4)] for s in range(n)]
    np.testing.assert_array_equal(obs, np.array(expected, np.float32))
    np.testing.assert_array_equal(nxt, obs + np.array([0, 1], np.float32))  # same episode, one step later
    np.testing.assert_array_equal(rew.numpy(), nxt[:, 1])
    ends = {(e, s + 1): t for (e, s), t in zip(expected, term.numpy())}
    assert ends[(0, 3)] == 1 and ends[(2, 3)] == 1  # terminations: no bootstrap
    assert ends[(1, 4)] == 0 and ends[(3, 4)] == 0  # time-limit truncations: bootstrap
    assert term.sum() == 2


def test_adam_equals_torch_optim_adam():
    """The core's Adam (torch's functional adam on the state it makes up front) gives the parameters and state of
    torch.optim.Adam's own step after several steps with two groups, also across a state_dict round trip into a
    fresh optimizer (what resuming does)."""
    torch.manual_seed(0)
    shapes = [(2, 5, 4), (2, 1, 4), ()]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]

    def groups(params):
        return [{"params": params[:2], "lr": 1e-3}, {"params": params[2:], "lr": 3e-4}]

    opt, ref_opt = sac.Adam(groups(ours)), torch.optim.Adam(groups(ref), fused=True)
    for step in range(6):
        if step == 3:  # continue in a fresh optimizer from the saved state
            saved = torch.load(io.BytesIO(_saved(opt.state_dict())), weights_only=True)
            opt = sac.Adam(groups(ours))
            opt.load_state_dict(saved)
        grads = [torch.randn(s) for s in shapes]
        for params, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            assert all(p.grad is None for p in params)
            sum((p * g).sum() for p, g in zip(params, grads)).backward()
        opt.step()
        ref_opt.step()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(not torch.equal(p, p0) for p, p0 in zip(ours, start))  # and the parameters did move
    for p, q in zip(ours, ref):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][k], ref_opt.state[q][k], rtol=0, atol=0)
    assert opt.state[ours[0]]["step"].item() == 6.0


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.skipif(sac.cxx_compiler() is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (.ci/run installs g++)")
def test_compile_matches_eager():
    """--compile: four updates (critic, actor and temperature, Polyak) give the losses, parameters and Adam state of
    eager mode from the same state and seed (fallback_random keeps torch's random draws)."""
    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    torch.manual_seed(0)
    agents = [sac.SAC(quick_args(compile=c), 5, space, torch.device("cpu")) for c in (False, True)]
    agents[1].load_state_dict(agents[0].state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [{"obs": torch.randn(32, 5, generator=g), "next_obs": torch.randn(32, 5, generator=g),
                "action": torch.rand(32, 2, generator=g) * 4 - 2, "reward": torch.randn(32, 1, generator=g),
                "terminated": (torch.rand(32, 1, generator=g) < 0.2).float()} for _ in range(4)]
    losses = []
    for agent in agents:
        torch.manual_seed(2)
        losses.append([agent.update(b, i) for i, b in enumerate(batches)])
    for eager, compiled in zip(*losses):
        assert eager.keys() == compiled.keys()
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5)
    for (name, p), p_eager in zip(agents[1].named_parameters(), agents[0].parameters()):
        torch.testing.assert_close(p, p_eager, rtol=1e-4, atol=1e-5, msg=name)
    for opt in ("q_optimizer", "actor_optimizer"):  # eager: Adam's fused kernel; compiled: its traced arithmetic
        eager, compiled = (getattr(a, opt).state_dict()["state"] for a in agents)
        assert eager.keys() == compiled.keys() and len(eager) > 0
        for i in eager:
            for k in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(compiled[i][k], eager[i][k], rtol=1e-4, atol=1e-6, msg=f"{opt} {i} {k}")
    assert not torch.equal(agents[1].critic.w2, agents[0].critic_target.w2)  # and the update did something


def test_compiled_update_is_one_graph_with_capturable_adam(monkeypatch):
    """--compile on CUDA crashed at the first update: torch runs a non-capturable CUDA Adam outside the compiled graph
    (torch.optim's maybe_fallback), where the traced backward's gradients are not set yet. The CPU never takes that
    fallback, so this checks what keeps CUDA off it, on the code path both devices share: each kind of update
    traces into one graph with no break, and Adam's steps inside it run in capturable form."""
    import torch._dynamo

    calls = []
    real = sac.adam_functional

    def recording(*a, **kw):
        calls.append({k: kw[k] for k in ("fused", "capturable")})
        return real(*a, **kw)

    monkeypatch.setattr(sac, "adam_functional", recording)
    agent = sac.SAC(quick_args(), 5, gym.spaces.Box(-2.0, 2.0, (2,), np.float32), torch.device("cpu"))
    batch = {"obs": torch.randn(16, 5), "next_obs": torch.randn(16, 5), "action": torch.rand(16, 2),
             "reward": torch.randn(16, 1), "terminated": torch.zeros(16, 1)}
    for actor in (False, True):
        torch._dynamo.reset()
        calls.clear()
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            explained = torch._dynamo.explain(functools.partial(agent.step, actor=actor, target=True))(batch)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        assert calls and all(c == {"fused": False, "capturable": True} for c in calls), calls
    calls.clear()
    agent.step(batch, actor=True, target=True)  # eager: the fused kernel, as Adam(fused=True)
    assert calls and all(c == {"fused": True, "capturable": False} for c in calls), calls


def test_cuda_graphs_wrap_the_update_as_a_function_of_the_batch_dict():
    """--cudagraphs on CUDA: each kind of update is a tensordict CudaGraphModule in its function mode, which flattens
    the batch dict the loop passes (with in_keys=[] it would be in its TensorDict mode, which the batch is not, and
    fail at the first update on a GPU). Without CUDA the module passes calls through, so the update runs as eager."""
    import warnings

    from tensordict.nn import CudaGraphModule

    agent = sac.SAC(quick_args(cudagraphs=True), 5, gym.spaces.Box(-2.0, 2.0, (2,), np.float32), torch.device("cpu"))
    assert not any(isinstance(u, CudaGraphModule) for u in agent.updates.values())  # the CPU: plain steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensordict's note that this machine has no CUDA device
        updates = sac.fast_updates(agent, agent.args, torch.device("cuda"))
    fast = [u.args[0] for u in updates.values()]  # each kind: FirstCalls(fast, eager, kind, batch)
    assert all(isinstance(u, CudaGraphModule) and not u._is_tensordict_module for u in fast)
    batch = {"obs": torch.randn(16, 5), "next_obs": torch.randn(16, 5), "action": torch.rand(16, 2),
             "reward": torch.randn(16, 1), "terminated": torch.zeros(16, 1)}
    out = updates[(True, True)](batch)
    assert {"losses/qf_loss", "losses/actor_loss", "losses/alpha"} <= set(out) and torch.isfinite(out["losses/qf_loss"])


@pytest.mark.skipif(sac.cxx_compiler() is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (.ci/run installs g++)")
def test_a_compile_that_raises_falls_back_to_the_eager_run(in_tmp, monkeypatch, capsys):
    """--compile whose compiled update raises at its first call (as inductor or dynamo can on a new machine): one
    warning line, summary.json records the fallback, and the run finishes exactly as an eager run (no update applied
    twice or lost: checkpoints bit-equal)."""
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("simulated inductor failure\nits second line")
        return call

    eager, eager_state = train_in_process(quick_args(run_name="eager"))
    assert eager["fast_paths"]["compile"] == "off" and "fast paths: --compile off" in capsys.readouterr().out
    monkeypatch.setattr(torch, "compile", broken)
    fell, fell_state = train_in_process(quick_args(run_name="fell", compile=True))
    err = capsys.readouterr().err
    assert ("warning: --compile failed here (RuntimeError: simulated inductor failure): continuing without it; "
            "--no-compile skips the attempt") in err and err.count("warning:") == 1
    assert fell["fast_paths"]["compile"] == "fell back (RuntimeError: simulated inductor failure)"
    assert json.loads((in_tmp / "runs" / "fell" / "summary.json").read_text())["fast_paths"] == fell["fast_paths"]
    assert fell["global_step"] == eager["global_step"] and fell["eval_returns"] == eager["eval_returns"]
    for k in ("sac", "q_optimizer", "actor_optimizer"):
        for a, b in zip(torch.utils._pytree.tree_leaves(eager_state[k]), torch.utils._pytree.tree_leaves(fell_state[k])):
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), k


def test_a_cuda_graph_capture_that_raises_falls_back_without_applying_an_update_twice(monkeypatch, capsys):
    """--cudagraphs whose capture raises (on the third call of a kind: two warm-up calls, which are real updates, then
    the capture): that call's state is put back and the update runs eagerly, then and for every kind from then on;
    the agent ends exactly where an eager agent does. The CUDA path's own code, on the CPU: the graph module is
    replaced by one that runs its warm-up calls and then fails as a capture would."""
    import tensordict.nn

    class FailingCapture:
        def __init__(self, fn, device):
            self.fn, self.calls = fn, 0

        def __call__(self, data):
            self.calls += 1
            if self.calls == 3:
                with torch.no_grad():  # a capture that got half way: it touched the weights before failing
                    agent.critic.w1.add_(1.0)
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing (simulated)")
            return self.fn(data)

    monkeypatch.setattr(tensordict.nn, "CudaGraphModule", FailingCapture)
    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    torch.manual_seed(0)
    agent, reference = (sac.SAC(quick_args(), 5, space, torch.device("cpu")) for _ in range(2))
    reference.load_state_dict(agent.state_dict())
    agent.updates = sac.fast_updates(agent, quick_args(cudagraphs=True), torch.device("cuda"))
    g = torch.Generator().manual_seed(1)
    batches = [{"obs": torch.randn(32, 5, generator=g), "next_obs": torch.randn(32, 5, generator=g),
                "action": torch.rand(32, 2, generator=g) * 4 - 2, "reward": torch.randn(32, 1, generator=g),
                "terminated": torch.zeros(32, 1)} for _ in range(8)]
    for a in (agent, reference):
        torch.manual_seed(2)
        for i, b in enumerate(batches):
            a.update(b, i)
    assert "warning: --cudagraphs failed here (RuntimeError: CUDA error: operation not permitted" in capsys.readouterr().err
    assert agent.fast_paths["cudagraphs"].startswith("fell back (RuntimeError: CUDA error")
    for (name, p), q in zip(agent.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name
    for opt in ("q_optimizer", "actor_optimizer"):
        for p, q in zip(getattr(agent, opt).state.values(), getattr(reference, opt).state.values()):
            assert all(torch.equal(p[k], q[k]) for k in ("step", "exp_avg", "exp_avg_sq")), opt


def test_replay_buffer_ring_wraps_around():
    rb = sac.ReplayBuffer(5, obs_dim=2, act_dim=1, device=torch.device("cpu"))

    def batch(start, n):  # transition i has every field equal to i
        v = np.arange(start, start + n, dtype=np.float32)
        return {"obs": np.repeat(v[:, None], 2, 1), "next_obs": np.repeat(v[:, None], 2, 1), "action": v[:, None],
                "reward": v, "terminated": v}

    rb.add(batch(0, 3))
    rb.add(batch(3, 4))  # 3, 4 fill the end; 5, 6 overwrite the two oldest
    assert (rb.pos, rb.size) == (2, 5)
    for k in rb.FIELDS:
        np.testing.assert_array_equal(rb.data[k][:, 0].numpy(), [5, 6, 2, 3, 4])
    s = rb.sample(64)
    assert set(s["reward"][:, 0].tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}
    torch.testing.assert_close(s["obs"][:, 0], s["reward"][:, 0])  # fields of one row stay together
    torch.testing.assert_close(s["action"][:, 0], s["terminated"][:, 0])


def test_critic_target_bootstraps_through_truncation_only():
    args = quick_args()
    space = gym.spaces.Box(-np.ones(1, np.float32), np.ones(1, np.float32))
    agent = sac.SAC(args, 2, space, torch.device("cpu"))
    torch.manual_seed(0)
    b = {"obs": torch.randn(8, 2), "action": torch.rand(8, 1) * 2 - 1, "reward": torch.randn(8, 1),
         "next_obs": torch.randn(8, 2), "terminated": torch.tensor([[1.0], [0.0]] * 4)}
    torch.manual_seed(1)
    loss, _ = agent.critic_loss(**b)
    # independent computation with the same actor noise
    torch.manual_seed(1)
    with torch.no_grad():
        a2, logp2, _ = agent.actor.get_action(b["next_obs"])
        qs = []
        c = agent.critic_target
        for m in range(2):  # each member as a plain MLP
            h = torch.relu(torch.cat([b["next_obs"], a2], 1) @ c.w1[m] + c.b1[m])
            h = torch.relu(h @ c.w2[m] + c.b2[m])
            qs.append(h @ c.w3[m, 0] + c.b3[m])
        soft_q = torch.minimum(*qs) - 1.0 * logp2[:, 0]  # the temperature's start under --autotune: 1
        y = b["reward"][:, 0] + (1 - b["terminated"][:, 0]) * args.gamma * soft_q
        q = agent.critic(b["obs"], b["action"])
        expected = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(y[::2], b["reward"][::2, 0])  # terminated rows: the reward alone


@pytest.mark.parametrize("flags,alpha,learned", [({}, 1.0, True), ({"alpha": 0.2}, 0.2, True),
                                                 ({"autotune": False}, 0.2, False),
                                                 ({"autotune": False, "alpha": 0.05}, 0.05, False)])
def test_temperature_starts_as_cleanrl(flags, alpha, learned):
    """--autotune starts the temperature at 1 (log_alpha = 0, CleanRL's and Stable-Baselines3's start) unless --alpha
    says otherwise; --no-autotune keeps it at --alpha, 0.2 by default (CleanRL's)."""
    space = gym.spaces.Box(-np.ones(1, np.float32), np.ones(1, np.float32))
    agent = sac.SAC(quick_args(**flags), 2, space, torch.device("cpu"))
    assert agent.log_alpha.exp().item() == pytest.approx(alpha) and agent.log_alpha.requires_grad == learned
    groups = [len(g["params"]) for g in agent.actor_optimizer.param_groups]
    assert groups == ([6, 1] if learned else [6])  # the temperature's own group (lr q_lr) only when it learns


def test_actor_log_prob_matches_torch_distributions():
    actor = sac.Actor(3, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    obs = torch.randn(64, 3)
    torch.manual_seed(3)
    action, log_prob, mean_action = actor.get_action(obs)
    torch.manual_seed(3)
    mean, log_std = actor(obs)
    x = mean + log_std.exp() * torch.randn_like(mean)
    d = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(actor.action_bias, actor.action_scale)])
    torch.testing.assert_close(action, torch.tanh(x) * actor.action_scale + actor.action_bias)
    torch.testing.assert_close(log_prob[:, 0], d.log_prob(action).sum(-1), rtol=1e-4, atol=1e-4)
    assert ((mean_action >= torch.tensor([-2.0, 0.0])) & (mean_action <= torch.tensor([2.0, 1.0]))).all()


def test_time_feature(in_tmp):
    env = sac.make_env(quick_args(env_id="Crafted-v0", time_feature=True))
    obs, _ = env.reset(seed=0)
    feats = [obs[-1]]
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
        feats.append(obs[-1])
    assert env.observation_space.shape == (3,)
    np.testing.assert_allclose(feats, [0, 0.25, 0.5, 0.75])


def test_pendulum_end_to_end_writes_events_args_checkpoint(in_tmp):
    """Also: rendering Pendulum (pygame) in a shell without a display prints no false SDL error
    ("error: XDG_RUNTIME_DIR is invalid or not set in the environment.")."""
    proc = run_script("sac_env_reward.py", "--env-id", "Pendulum-v1", "--total-timesteps", "500", "--num-envs", "2",
                      "--run-name", "p", *QUICK, "--eval-every", "250", "--capture-video", "--render-size", "64",
                      cwd=in_tmp, env={"SDL_VIDEODRIVER": None, "XDG_RUNTIME_DIR": None})
    assert "XDG_RUNTIME_DIR" not in proc.stderr + proc.stdout, proc.stderr
    run = in_tmp / "runs" / "p"
    args = json.loads((run / "args.json").read_text())
    assert args["env_id"] == "Pendulum-v1" and args["num_envs"] == 2
    tags = scalars(run)
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/eval_return", "charts/SPS",
                "losses/qf_loss", "losses/actor_loss", "losses/alpha"]:
        assert tag in tags, tag
    assert [s for s, _ in tags["charts/eval_return"]] == [250, 500]
    assert all(length == 200 for _, length in tags["charts/episodic_length"])
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 500 and ckpt["replay_buffer"]["size"] == 500
    import imageio.v3 as iio

    video = iio.imread(run / "videos" / "step_500.mp4")
    assert video.shape[0] == 201 and video.shape[-1] == 3  # reset frame + 200 steps


def test_mujoco_end_to_end(in_tmp):
    """A MuJoCo run that renders (its evaluation video) with MUJOCO_GL set but empty, as `MUJOCO_GL= python -m pytest`
    leaves it: taken as unset (EGL), where MuJoCo's own fallback, GLFW, aborted the process without a display."""
    proc = run_script("sac_env_reward.py", "--env-id", "Hopper-v4", "--total-timesteps", "300", "--run-name", "h",
                      *QUICK, "--capture-video", "--max-episode-steps", "20", "--render-size", "64", cwd=in_tmp,
                      env={"MUJOCO_GL": "", "DISPLAY": None})
    ckpt = torch.load(in_tmp / "runs" / "h" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 300
    assert ckpt["replay_buffer"]["data"]["obs"].shape == (300, 11)
    assert (in_tmp / "runs" / "h" / "videos" / "step_300.mp4").stat().st_size > 0
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]


def test_dm_control_dict_observations_flattened(in_tmp):
    env = sac.make_env(quick_args(env_id="dm_control/cartpole-swingup-v0"))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (5,)  # position (3) + velocity (2)
    _, ckpt = train_in_process(quick_args(env_id="dm_control/cartpole-swingup-v0", total_timesteps=250))
    assert ckpt["replay_buffer"]["data"]["obs"].shape == (250, 5)


def test_same_seed_gives_identical_runs(in_tmp):
    s1, c1 = train_in_process(quick_args(run_name="a", total_timesteps=500, eval_episodes=2))
    s2, c2 = train_in_process(quick_args(run_name="b", total_timesteps=500, eval_episodes=2))
    s3, _ = train_in_process(quick_args(run_name="c", total_timesteps=500, eval_episodes=2, seed=2))
    assert s1["eval_returns"] == s2["eval_returns"]
    assert s1["eval_returns"] != s3["eval_returns"]
    torch.testing.assert_close(c1["replay_buffer"]["data"]["reward"], c2["replay_buffer"]["data"]["reward"], rtol=0, atol=0)
    for k in c1["sac"]:
        torch.testing.assert_close(c1["sac"][k], c2["sac"][k], rtol=0, atol=0)


def test_checkpoint_and_resume_continue_the_same_run(in_tmp):
    _, first = train_in_process(quick_args(run_name="r", total_timesteps=400))
    # continue to 700 steps: same run folder, same buffer (first 400 transitions unchanged), step count goes on
    run = in_tmp / "runs" / "r"
    saved = json.loads((run / "args.json").read_text())
    saved["total_timesteps"] = 700
    (run / "args.json").write_text(json.dumps(saved))
    # TensorBoard reads a run's event files in name order, events.out.tfevents.{second}.{host}.{pid}.{counter}: a
    # resume in the same second of the same process would be ordered by the counter as text (".10" before ".9");
    # a real resume starts seconds later, so this one waits for the next second
    time.sleep(1.0)
    summary = sac.train(*sac.prepare_run(sac.Args(resume=str(run)), sac.Args), sac.build_reward)
    second = torch.load(run / "checkpoint.pt", weights_only=True)
    assert summary["global_step"] == 700 and second["replay_buffer"]["size"] == 700
    for k, v in first["replay_buffer"]["data"].items():
        torch.testing.assert_close(second["replay_buffer"]["data"][k][:400], v)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one TensorBoard run, written by both processes
    steps = [s for s, _ in scalars(run)["charts/SPS"]]
    assert steps == sorted(steps) and steps[-1] == 700


def test_checkpoint_of_another_version_gives_one_line_error(in_tmp):
    """A checkpoint whose networks or optimizer state have another layout (an older SAC core) is refused with one
    line, both for --resume and for load_actor (eval_videos.py)."""
    train_in_process(quick_args(run_name="old", total_timesteps=250))
    path = in_tmp / "runs" / "old" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["sac"] = {k.replace("actor.head.", "actor.fc_mean."): v for k, v in state["sac"].items()}
    torch.save(state, path)
    with pytest.raises(sac.UserError, match="another version"):
        sac.load_actor(in_tmp / "runs" / "old")
    proc = run_script("sac_env_reward.py", "--resume", "runs/old", cwd=in_tmp, check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "another version" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def with_default_sigint():
    """A child's SIGINT as a terminal leaves it (a process started in the background by a non-interactive shell, as
    CI's, inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, sac.EXIT_INTERRUPTED, "SIGTERM"),
                                             (signal.SIGUSR1, sac.EXIT_INTERRUPTED, "SIGUSR1"),
                                             (signal.SIGINT, sac.EXIT_CTRL_C, "Ctrl-C (SIGINT)")])
def test_signal_saves_checkpoint_and_resume_finishes(in_tmp, sig, code, name):
    """SLURM's signals and Ctrl-C: the step finishes, a checkpoint is saved, one line names the --resume command,
    exit 75 (130 for Ctrl-C, as a shell reports it), no traceback; resuming finishes the run."""
    cmd = [sys.executable, str(ROOT / "sac_env_reward.py"), "--env-id", "Pendulum-v1", "--total-timesteps", "2500",
           "--learning-starts", "2400", "--batch-size", "64", "--eval-every", "0", "--eval-episodes", "1",
           "--checkpoint-every", "1000", "--no-progress", "--run-name", "s"]
    proc = subprocess.Popen(cmd, cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=with_default_sigint)
    ckpt_path = in_tmp / "runs" / "s" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt_path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"{name} at step" in err and "--resume runs/s" in err and "Traceback" not in err, err
    state = torch.load(ckpt_path, weights_only=True)
    assert 1000 <= state["global_step"] < 2500
    assert state["replay_buffer"]["size"] == state["global_step"]
    run_script("sac_env_reward.py", "--resume", "runs/s", cwd=in_tmp)
    assert torch.load(ckpt_path, weights_only=True)["global_step"] == 2500


def test_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(in_tmp, monkeypatch):
    """The first Ctrl-C asks for a checkpoint at the end of the step; a second one, before that, stops at once
    (KeyboardInterrupt where it lands), and the run ends in one line naming the checkpoint that is kept."""
    import os

    kills = []
    real_log = sac.Run.log

    def log(self):  # the run's 300th step: Ctrl-C twice, the second before the step ends
        real_log(self)
        if self.global_step == 300 and not kills:
            kills.append(self.saved_step)
            os.kill(os.getpid(), signal.SIGINT)
            assert self.stop == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(sac.Run, "log", log)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(sac.Interrupted) as stop:
        train_in_process(quick_args(checkpoint_every=200, total_timesteps=400))
    assert kills == [200] and stop.value.code == sac.EXIT_CTRL_C
    assert "stopped at once; the checkpoint of step 200 is kept" in str(stop.value)
    assert torch.load(in_tmp / "runs" / "t" / "checkpoint.pt", weights_only=True)["global_step"] == 200
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers restored


def test_atomic_checkpoint_survives_a_failed_save(in_tmp, monkeypatch):
    _, first = train_in_process(quick_args(run_name="x", total_timesteps=300))
    path = in_tmp / "runs" / "x" / "checkpoint.pt"
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    agent = sac.SAC(quick_args(), 3, gym.spaces.Box(-2 * np.ones(1, np.float32), 2 * np.ones(1, np.float32)),
                    torch.device("cpu"))
    envs = sac.make_envs(quick_args())
    with pytest.raises(OSError):
        sac.save_checkpoint(path, agent, sac.ReplayBuffer(10, 3, 1, "cpu"), envs, sac.EnvReward(), 1, 1, {})
    assert path.read_bytes() == before


@pytest.mark.parametrize("argv,message,env", [
    (["--env-id", "NoSuchEnv-v9"], "unknown environment id 'NoSuchEnv-v9'", None),
    (["--env-id", "CartPole-v1"], "Discrete action space", None),
    (["--resume", "runs/missing"], "--resume runs/missing", None),
    (["--num-envs", "0"], "--num-envs must be at least 1", None),
    (["--save-policy-every", "-5"], "--save-policy-every must be 0 (no snapshots) or a number of steps", None),
    (["--env-id", "Pendulum-v1", "--compile"], "--compile needs a C++ compiler", {"PATH": "/nonexistent", "CXX": ""}),
])
def test_bad_input_gives_one_line_error(in_tmp, argv, message, env):
    proc = run_script("sac_env_reward.py", *argv, "--no-progress", cwd=in_tmp, check=False, timeout=120, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.heavy
@pytest.mark.xdist_group(LADDER_GROUP)
def test_pendulum_learns(pendulum_ladder):
    """The standard recipe solves Pendulum: final deterministic eval return above -400 within 6k steps (random
    actions: about -1100; the margin over seeds: docs/speed.md#learning). The run is the shared fixture that also
    keeps policy snapshots (eval_reward.py's ladder): snapshots do not change training."""
    run_dir, summary = pendulum_ladder
    assert summary["global_step"] == 6_000
    assert np.mean(summary["eval_returns"]) > -400, summary["eval_returns"]


# ----- run folders someone else wrote, or that a killed job left: refused in one line, nothing lost or run -----
@pytest.mark.parametrize("name", ["../../somewhere", "a/b", "..", ".", "", "a\\b"])
def test_run_name_must_stay_under_runs(in_tmp, name):
    """A run name is one folder name: anything else is refused (exit 2, one line) before anything is written."""
    proc = run_script("sac_env_reward.py", "--env-id", "Pendulum-v1", "--run-name", name, *QUICK, cwd=in_tmp,
                      check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "single folder name" in lines[0], proc.stderr
    assert list(in_tmp.iterdir()) == [] and not (in_tmp.parent / "somewhere").exists()


def damage(field, value):
    def apply(saved):
        if value is DELETE:
            del saved[field]
        else:
            saved[field] = value
    return apply


DELETE = object()


@pytest.mark.parametrize("field,value,message", [
    ("total_timesteps", "many", "field 'total_timesteps': \"many\" is not int"),
    ("gamma", True, "field 'gamma': true is not float"),
    ("camera", 3, "field 'camera': 3 is not str or null"),
    ("gamma", DELETE, "no field 'gamma'"),
    ("temperature", 1.0, "unknown field 'temperature'"),
])
def test_damaged_args_json_is_refused_in_one_line(in_tmp, field, value, message):
    train_in_process(quick_args(run_name="d", total_timesteps=250))
    run = in_tmp / "runs" / "d"
    saved = json.loads((run / "args.json").read_text())
    damage(field, value)(saved)
    (run / "args.json").write_text(json.dumps(saved))
    before = (run / "checkpoint.pt").read_bytes()
    proc = run_script("sac_env_reward.py", "--resume", "runs/d", cwd=in_tmp, check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and (run / "checkpoint.pt").read_bytes() == before


def test_resume_before_the_first_checkpoint_says_how_to_start_again(in_tmp):
    """A run killed before its first checkpoint has args.json only: --resume says so, and the same run name starts
    it again from step 0."""
    args, run_dir = sac.prepare_run(quick_args(run_name="k"), sac.Args)
    sac.write_args(run_dir, sac.dataclasses.asdict(args))  # what a job killed during its first steps leaves
    assert (in_tmp / "runs" / "k" / "args.json").is_file()
    proc = run_script("sac_env_reward.py", "--resume", "runs/k", cwd=in_tmp, check=False, timeout=120)
    assert proc.returncode == 2 and "no checkpoint was written yet" in proc.stderr and "--run-name k" in proc.stderr
    run_script("sac_env_reward.py", "--env-id", "Pendulum-v1", "--total-timesteps", "250", "--run-name", "k", *QUICK,
               cwd=in_tmp)
    assert torch.load(in_tmp / "runs" / "k" / "checkpoint.pt", weights_only=True)["global_step"] == 250


class Payload:
    """Unpickling this runs code: it creates the file at `path` (what a malicious checkpoint could do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_checkpoint_with_a_pickled_object_is_refused_and_never_run(in_tmp):
    """Checkpoints hold tensors and plain values only (weights_only=True reads them); one that holds another pickled
    object is refused in one line by --resume and by load_actor, and the object's code never runs."""
    train_in_process(quick_args(run_name="evil", total_timesteps=250))
    path = in_tmp / "runs" / "evil" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    marker = in_tmp / "code_ran"
    state["extra"]["note"] = Payload(str(marker))
    torch.save(state, path)
    with pytest.raises(sac.UserError, match="pickled Python objects"):
        sac.load_actor(in_tmp / "runs" / "evil")
    proc = run_script("sac_env_reward.py", "--resume", "runs/evil", cwd=in_tmp, check=False, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "pickled Python objects" in lines[0], proc.stderr
    assert "re-make the run" in lines[0] and not marker.exists()
    # the check above can fail: the file does carry the call that unpickling it without weights_only would run
    # (read with pickletools, which decodes the opcodes and calls nothing)
    with zipfile.ZipFile(path) as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickled)]
    assert ("GLOBAL", "pathlib Path") in ops and ("BINUNICODE", "touch") in ops and ("BINUNICODE", marker.name) in ops


def wandb_records(run_dir):
    """The records of a run's offline W&B log (runs/NAME/wandb/offline-run-*/run-*.wandb): LevelDB's log format (7
    bytes of header, then 32 KiB blocks of records, each a CRC, a length, a type: full, first, middle, last) holding
    W&B's protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, parts = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or a record's last part
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


@pytest.mark.heavy
def test_track_logs_what_tensorboard_gets_to_wandb_offline(in_tmp):
    """--track with WANDB_MODE=offline, as from the README's install: the offline run, read back, holds every
    TensorBoard scalar of the run once, at its step, and the evaluation video."""
    run_script("sac_env_reward.py", *QUICK, "--env-id", "Pendulum-v1", "--total-timesteps", "400", "--track",
               "--capture-video", "--max-episode-steps", "50", "--run-name", "w", cwd=in_tmp,
               env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in wandb_records(in_tmp / "runs" / "w") if r.WhichOneof("record_type") == "history"]
    logged = {}
    for row in history:
        for tag, value in row.items():
            if "/" in tag and not tag.startswith("videos/"):
                logged.setdefault(tag, []).append((row["global_step"], value))
    tb = scalars(in_tmp / "runs" / "w")
    assert set(logged) == set(tb) and "charts/episodic_return" in logged
    for tag, points in tb.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    videos = [row for row in history if row.get("videos/eval/_type") == "video-file"]
    assert len(videos) == 1 and videos[0]["global_step"] == 400


def test_track_without_wandb_is_one_line_before_anything_is_written(in_tmp, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find(name, *a))
    with pytest.raises(sac.UserError, match="--track logs to Weights & Biases, which is not installed here: pip install"):
        train_in_process(quick_args(track=True))
    assert not (in_tmp / "runs").exists()
