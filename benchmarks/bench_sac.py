"""Learning-phase throughput of sac_env_reward.py against a plain eager SAC (CleanRL's sac_continuous_action).

Both run the same loop on the same env: `--learning-starts` random steps (not timed), then `--steps` steps of
acting + one update per step, timed. The baseline below is a faithful transcription of CleanRL's update (two
separate QNetworks, torch.distributions.Normal, Adam with default settings, critic gradients computed in the actor
loss and zeroed later, a fresh sample for the alpha loss, a Python loop for the Polyak update). Variants run
interleaved, `--repeats` times. Printed: each variant's median steps/s, the ratio of medians, and the median of
the per-repeat ratios (each run against the baseline run just before it, which cancels most of a shared machine's
slow drift in speed).

    python benchmarks/bench_sac.py --env-id Hopper-v4 --steps 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sac_env_reward as sac  # noqa: E402


# ----- CleanRL's sac_continuous_action networks and update, eager (the baseline) -----
class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CleanRLActor(nn.Module):
    def __init__(self, obs_dim, low, high):
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
        return self.fc_mean(x), -5 + 0.5 * (2 - (-5)) * (log_std + 1)

    def get_action(self, x):
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t) - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean) * self.action_scale + self.action_bias


def run_cleanrl(env_id: str, learning_starts: int, steps: int, seed: int) -> float:
    """CleanRL's loop (buffer as numpy arrays like SB3's ReplayBuffer); returns learning-phase steps/s."""
    torch.manual_seed(seed)
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor = CleanRLActor(obs_dim, env.action_space.low, env.action_space.high)
    qf1, qf2 = SoftQNetwork(obs_dim, act_dim), SoftQNetwork(obs_dim, act_dim)
    qf1_t, qf2_t = SoftQNetwork(obs_dim, act_dim), SoftQNetwork(obs_dim, act_dim)
    qf1_t.load_state_dict(qf1.state_dict())
    qf2_t.load_state_dict(qf2.state_dict())
    q_opt = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=1e-3)
    a_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    target_entropy = -act_dim
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().item()
    al_opt = torch.optim.Adam([log_alpha], lr=1e-3)  # CleanRL: lr=args.q_lr
    n = learning_starts + steps
    B = {"o": np.zeros((n, obs_dim), np.float32), "o2": np.zeros((n, obs_dim), np.float32),
         "a": np.zeros((n, act_dim), np.float32), "r": np.zeros((n, 1), np.float32), "d": np.zeros((n, 1), np.float32)}
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    t0 = None
    for step in range(n):
        if step == learning_starts:
            t0 = time.perf_counter()
        if step < learning_starts:
            a = env.action_space.sample()
        else:
            a, _, _ = actor.get_action(torch.Tensor(obs).unsqueeze(0))
            a = a.detach().cpu().numpy()[0]
        obs2, r, term, trunc, _ = env.step(a)
        B["o"][step], B["o2"][step], B["a"][step], B["r"][step], B["d"][step] = obs, obs2, a, r, term
        obs = env.reset()[0] if term or trunc else obs2
        if step > learning_starts:
            idx = np.random.randint(0, step + 1, 256)
            o, o2, act, rew, d = (torch.as_tensor(B[k][idx]) for k in ("o", "o2", "a", "r", "d"))
            with torch.no_grad():
                na, nlp, _ = actor.get_action(o2)
                min_q = torch.min(qf1_t(o2, na), qf2_t(o2, na)) - alpha * nlp
                next_q = rew.flatten() + (1 - d.flatten()) * 0.99 * min_q.view(-1)
            q1, q2 = qf1(o, act).view(-1), qf2(o, act).view(-1)
            qf_loss = F.mse_loss(q1, next_q) + F.mse_loss(q2, next_q)
            q_opt.zero_grad()
            qf_loss.backward()
            q_opt.step()
            if step % 2 == 0:
                for _ in range(2):
                    pi, lp, _ = actor.get_action(o)
                    min_q_pi = torch.min(qf1(o, pi), qf2(o, pi))
                    actor_loss = ((alpha * lp) - min_q_pi).mean()
                    a_opt.zero_grad()
                    actor_loss.backward()
                    a_opt.step()
                    with torch.no_grad():
                        _, lp, _ = actor.get_action(o)
                    alpha_loss = (-log_alpha.exp() * (lp + target_entropy)).mean()
                    al_opt.zero_grad()
                    alpha_loss.backward()
                    al_opt.step()
                    alpha = log_alpha.exp().item()
            for p, tp in zip(qf1.parameters(), qf1_t.parameters()):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)
            for p, tp in zip(qf2.parameters(), qf2_t.parameters()):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)
    return steps / (time.perf_counter() - t0)


def run_ours(env_id: str, learning_starts: int, steps: int, seed: int, compile: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        cwd = os.getcwd()
        os.chdir(d)
        try:
            args = sac.Args(env_id=env_id, seed=seed, total_timesteps=learning_starts + steps,
                            learning_starts=learning_starts, eval_every=0, eval_episodes=0, checkpoint_every=0,
                            save_buffer=False, progress=False, compile=compile, run_name="bench")
            args, run_dir = sac.prepare_run(args, sac.Args)
            return sac.train(args, run_dir, sac.build_reward)["learning_sps"]
        finally:
            os.chdir(cwd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Hopper-v4")
    p.add_argument("--learning-starts", type=int, default=5000)
    p.add_argument("--steps", type=int, default=2000, help="timed learning steps per variant")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure sac_env_reward.py --compile")
    a = p.parse_args()
    variants = {"cleanrl (eager baseline)": lambda s: run_cleanrl(a.env_id, a.learning_starts, a.steps, s),
                "sac_env_reward.py": lambda s: run_ours(a.env_id, a.learning_starts, a.steps, s, False)}
    if a.compile:
        variants["sac_env_reward.py --compile"] = lambda s: run_ours(a.env_id, a.learning_starts, a.steps, s, True)
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
