"""Where one SAC update's time goes: each phase of sac_env_reward.SAC's update timed with perf_counter.

torch.profiler is not used: on the 2-core CPU it inflates the in-place timings of elementwise ops on (2, 256, 256)
tensors by 5-10x (measured: a mul that takes 34 us under perf_counter shows as 250 us), which points at the wrong
places. The phases run exactly as SAC.update runs them (same methods, same order), on a replay buffer of random
transitions shaped like the env's, after a warm-up.

    python benchmarks/profile_update.py --env-id Hopper-v4 --updates 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sac_env_reward as sac  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Hopper-v4")
    p.add_argument("--updates", type=int, default=300, help="timed updates (after 40 warm-up updates)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    args = sac.Args(env_id=a.env_id)
    env = gym.make(a.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = sac.SAC(args, obs_dim, env.action_space, torch.device("cpu"))
    rb = sac.ReplayBuffer(args.buffer_size, obs_dim, act_dim, torch.device("cpu"))
    rng, n = np.random.default_rng(0), 20_000
    rb.add({"obs": rng.standard_normal((n, obs_dim)), "next_obs": rng.standard_normal((n, obs_dim)),
            "action": rng.uniform(-1, 1, (n, act_dim)), "reward": rng.standard_normal(n), "terminated": np.zeros(n)})

    times = defaultdict(list)

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name].append(time.perf_counter() - t0)
        return out

    def update(iteration):  # SAC.update's eager path, phase by phase
        b = timed("sample the batch", lambda: rb.sample(args.batch_size))
        qf_loss, _ = timed("critic: target + forward + loss", lambda: agent.critic_loss(
            b["obs"], b["action"], b["reward"], b["next_obs"], b["terminated"]))
        timed("critic: zero_grad", agent.q_optimizer.zero_grad)
        timed("critic: backward", qf_loss.backward)
        timed("critic: Adam step", agent.q_optimizer.step)
        if iteration % args.policy_frequency == 0:
            for _ in range(args.policy_frequency):
                actor_loss, alpha_loss = timed("actor: forward + loss", lambda: agent.actor_loss(b["obs"]))
                timed("actor: zero_grad", agent.actor_optimizer.zero_grad)
                timed("actor: backward", (actor_loss + alpha_loss).backward)
                timed("actor: Adam step", agent.actor_optimizer.step)
        if iteration % args.target_network_frequency == 0:
            timed("target: Polyak", agent.target_update)

    for i in range(40):
        update(i)
    times.clear()
    t0 = time.perf_counter()
    for i in range(a.updates):
        update(i)
    total = (time.perf_counter() - t0) / a.updates * 1e3
    print(f"{a.env_id}, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads: "
          f"{total:.2f} ms per update ({a.updates} updates; policy_frequency {args.policy_frequency})\n")
    print("| phase | ms per update | share | median call (us) |\n|-|-|-|-|")
    for name, v in times.items():
        per = sum(v) / a.updates * 1e3
        print(f"| {name} | {per:.3f} | {per / total:.0%} | {statistics.median(v) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
