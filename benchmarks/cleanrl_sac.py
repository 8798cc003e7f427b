"""CleanRL's sac_continuous_action.py, transcribed: the reference the project's SAC is measured against.

The networks, the update and the loop are CleanRL's (github.com/vwxyzjn/cleanrl, cleanrl/sac_continuous_action.py):
two separate SoftQNetworks and their targets, torch.distributions.Normal, three torch.optim.Adam (critics, actor,
temperature with lr q_lr), the temperature starting at 1 (log_alpha = 0) when autotuned, the critics' gradients
computed in the actor loss and zeroed later, a fresh sample for the temperature loss, a Python loop for the Polyak
update, a replay buffer of numpy arrays sampled with np.random.randint (as Stable-Baselines3's). Two changes, both
outside the algorithm:
- gymnasium 1.x resets an env on the step after it ends, which CleanRL's code (written for gymnasium 0.29) does
  not handle; this loop resets the single env itself when an episode ends and stores the true final observation,
  which is what CleanRL stores (real_next_obs, with `terminated` as the done flag);
- evaluation: every --eval-every steps and at the end, --eval-episodes deterministic (mean action) episodes,
  with sac_env_reward.py's own evaluate() on the env its make_env builds, seeded as it seeds them: the same
  evaluation as the project's scripts, so that benchmarks/learning.py compares like with like.

It writes what benchmarks/learning.py reads: runs/{run_name}/ with TensorBoard events (charts/episodic_return,
charts/eval_return, losses, charts/SPS) and summary.json (final eval returns, learning-phase steps/s).

    python benchmarks/cleanrl_sac.py --env-id Hopper-v4 --total-timesteps 50000
    python benchmarks/learning.py --compare --env-id Hopper-v4 --seeds 3 --steps 50000
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import sac_env_reward as ours  # noqa: E402  (evaluation and run-name checks only)


@dataclass
class Args:
    """CleanRL's sac_continuous_action defaults; the flags benchmarks/learning.py passes."""

    env_id: str = "Hopper-v4"
    """Gymnasium id of a continuous-control env"""
    seed: int = 1
    """seed of python, numpy, torch and the env"""
    total_timesteps: int = 1_000_000
    """environment steps"""
    buffer_size: int = 1_000_000
    """replay memory size"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """batch size of the gradient updates"""
    learning_starts: int = 5_000
    """steps of uniform random actions before learning starts"""
    policy_lr: float = 3e-4
    """learning rate of the actor"""
    q_lr: float = 1e-3
    """learning rate of the critics and of the temperature"""
    policy_frequency: int = 2
    """the actor is updated this many times every this many steps"""
    target_network_frequency: int = 1
    """steps between target-network updates"""
    alpha: float = 0.2
    """entropy temperature when not autotuned (autotuned, it starts at 1: log_alpha = 0)"""
    autotune: bool = True
    """learn the temperature towards the target entropy -|A|"""
    eval_every: int = 10_000
    """steps between evaluations (0: only at the end)"""
    eval_episodes: int = 5
    """deterministic (mean action) episodes per evaluation"""
    run_name: Optional[str] = None
    """folder name under runs/ (default: {env_id}__cleanrl_sac__{seed}__{unix time})"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    device: str = "auto"
    """torch device: auto (cuda if available, as CleanRL's default --cuda), cpu, cuda"""
    progress: bool = True
    """print the episodic return of finished training episodes"""


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


LOG_STD_MAX, LOG_STD_MIN = 2, -5


class Actor(nn.Module):
    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mean = nn.Linear(256, len(low))
        self.fc_logstd = nn.Linear(256, len(low))
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)

    def get_action(self, x):
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()  # reparameterisation: mean + std * N(0, 1)
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t) - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean) * self.action_scale + self.action_bias

    @torch.no_grad()
    def act(self, x):
        """The deterministic action, as sac_env_reward.evaluate() asks its actor for it."""
        return self.get_action(x)[2]


class CleanRLSAC:
    """CleanRL's networks, optimizers and update step (one call per environment step after learning_starts)."""

    def __init__(self, args: Args, obs_dim: int, action_space: gym.spaces.Box, device=torch.device("cpu")):
        self.args, act_dim = args, action_space.shape[0]
        self.actor = Actor(obs_dim, action_space.low, action_space.high).to(device)
        self.qf1, self.qf2 = SoftQNetwork(obs_dim, act_dim).to(device), SoftQNetwork(obs_dim, act_dim).to(device)
        self.qf1_target = SoftQNetwork(obs_dim, act_dim).to(device)
        self.qf2_target = SoftQNetwork(obs_dim, act_dim).to(device)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam(list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=args.q_lr)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=args.policy_lr)
        if args.autotune:
            self.target_entropy = -float(act_dim)
            self.log_alpha = torch.zeros(1, requires_grad=True, device=device)
            self.alpha = self.log_alpha.exp().item()
            self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr)
        else:
            self.alpha = args.alpha

    def update(self, global_step: int, o, a, r, o2, d) -> dict:
        args = self.args
        with torch.no_grad():
            next_state_actions, next_state_log_pi, _ = self.actor.get_action(o2)
            qf1_next_target = self.qf1_target(o2, next_state_actions)
            qf2_next_target = self.qf2_target(o2, next_state_actions)
            min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - self.alpha * next_state_log_pi
            next_q_value = r.flatten() + (1 - d.flatten()) * args.gamma * min_qf_next_target.view(-1)
        qf1_a_values = self.qf1(o, a).view(-1)
        qf2_a_values = self.qf2(o, a).view(-1)
        qf_loss = F.mse_loss(qf1_a_values, next_q_value) + F.mse_loss(qf2_a_values, next_q_value)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        out = {"losses/qf_loss": qf_loss.detach() / 2.0}
        if global_step % args.policy_frequency == 0:  # delayed, compensated by policy_frequency actor steps
            for _ in range(args.policy_frequency):
                pi, log_pi, _ = self.actor.get_action(o)
                min_qf_pi = torch.min(self.qf1(o, pi), self.qf2(o, pi))
                actor_loss = ((self.alpha * log_pi) - min_qf_pi).mean()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_optimizer.step()
                out["losses/actor_loss"] = actor_loss.detach()
                if args.autotune:
                    with torch.no_grad():
                        _, log_pi, _ = self.actor.get_action(o)
                    alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
                    self.a_optimizer.zero_grad()
                    alpha_loss.backward()
                    self.a_optimizer.step()
                    self.alpha = self.log_alpha.exp().item()
        if global_step % args.target_network_frequency == 0:
            for param, target_param in zip(self.qf1.parameters(), self.qf1_target.parameters()):
                target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
            for param, target_param in zip(self.qf2.parameters(), self.qf2_target.parameters()):
                target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
        out["losses/alpha"] = self.alpha
        return out


def train(args: Args, run_dir: Optional[Path] = None) -> dict:
    """CleanRL's loop; returns a summary (final eval returns, learning-phase steps/s). run_dir None: no logs and no
    evaluation (bench_sac.py times the learning phase alone)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else \
        torch.device(args.device)
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    sac = CleanRLSAC(args, obs_dim, env.action_space, device)
    n = min(args.buffer_size, args.total_timesteps)
    dims = {"o": obs_dim, "o2": obs_dim, "a": act_dim, "r": 1, "d": 1}
    buf = {k: np.zeros((n, d), np.float32) for k, d in dims.items()}
    writer, eval_env = None, None
    if run_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir))
        eval_env = ours.make_env(ours.SACArgs(env_id=args.env_id))
    summary: dict = {}

    def evaluate(step: int) -> None:
        returns = ours.evaluate(sac.actor, eval_env, args.eval_episodes, args.seed + 10_000, device)[0]
        writer.add_scalar("charts/eval_return", np.mean(returns), step)
        summary["eval_returns"] = returns

    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    ep_return, t_learn, step_learn = 0.0, None, 0
    next_eval = args.eval_every or args.total_timesteps
    for global_step in range(args.total_timesteps):
        if global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            action, _, _ = sac.actor.get_action(torch.Tensor(obs).unsqueeze(0).to(device))
            action = action.detach().cpu().numpy()[0]
        next_obs, reward, terminated, truncated, _ = env.step(action)
        ep_return += float(reward)
        i = global_step % n
        buf["o"][i], buf["o2"][i], buf["a"][i], buf["r"][i], buf["d"][i] = obs, next_obs, action, reward, terminated
        obs = next_obs
        if terminated or truncated:
            if writer is not None:
                writer.add_scalar("charts/episodic_return", ep_return, global_step)
                if args.progress:
                    print(f"global_step={global_step}, episodic_return={ep_return:.1f}", flush=True)
            obs, ep_return = env.reset()[0], 0.0
        if global_step > args.learning_starts:
            idx = np.random.randint(0, min(global_step + 1, n), size=args.batch_size)
            batch = [torch.as_tensor(buf[k][idx], device=device) for k in ("o", "a", "r", "o2", "d")]
            losses = sac.update(global_step, *batch)
            if t_learn is None:
                t_learn, step_learn = time.perf_counter(), global_step
            if writer is not None and global_step % 1000 == 0:
                for k, v in losses.items():
                    writer.add_scalar(k, float(v), global_step)
                writer.add_scalar("charts/SPS", (global_step - step_learn) / (time.perf_counter() - t_learn + 1e-9),
                                  global_step)
        if eval_env is not None and args.eval_episodes and global_step + 1 >= next_eval:
            next_eval += args.eval_every or args.total_timesteps
            evaluate(global_step + 1)
    if eval_env is not None and args.eval_episodes and "eval_returns" not in summary:
        evaluate(args.total_timesteps)
    if t_learn is not None:
        summary["learning_sps"] = (args.total_timesteps - 1 - step_learn) / (time.perf_counter() - t_learn)
    summary["global_step"] = args.total_timesteps
    if writer is not None:
        writer.close()
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    args = tyro.cli(Args)
    if args.run_name is None:
        args.run_name = f"{args.env_id.replace('/', '-')}__cleanrl_sac__{args.seed}__{int(time.time())}"
    try:
        ours.check_run_name(args.run_name)
    except ours.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path("runs") / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
    summary = train(args, run_dir)
    if summary.get("eval_returns"):
        print(f"finished {run_dir}: step {summary['global_step']}, eval return {np.mean(summary['eval_returns']):.1f}")


if __name__ == "__main__":
    main()
