"""Where one SAC update's time goes: each phase of sac_env_reward.SAC's update timed with perf_counter, eager and
(with --compile) with the losses compiled, the two interleaved in rounds in one process.

torch.profiler is not used: on the 2-core CPU it inflates the in-place timings of elementwise ops on (2, 256, 256)
tensors by 5-10x (measured: a mul that takes 34 us under perf_counter shows as 250 us), which points at the wrong
places. The phases run exactly as SAC.update runs them (same methods, same order), on a replay buffer of random
transitions shaped like the env's, after a warm-up.

    python benchmarks/profile_update.py --env-id Hopper-v4 --updates 300 [--compile]
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--updates", type=int, default=300, help="timed updates per variant (after 40 warm-up updates)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true",
                   help="also the losses compiled (sac_env_reward.py --compile), interleaved with eager in rounds")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    env = gym.make(a.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    variants = {"eager": sac.Args(env_id=a.env_id)}
    if a.compile:
        variants["compiled"] = sac.Args(env_id=a.env_id, compile=True)
    args = variants["eager"]
    agents = {k: sac.SAC(v, obs_dim, env.action_space, torch.device("cpu")) for k, v in variants.items()}
    rb = sac.ReplayBuffer(args.buffer_size, obs_dim, act_dim, torch.device("cpu"))
    rng, n = np.random.default_rng(0), 20_000
    rb.add({"obs": rng.standard_normal((n, obs_dim)), "next_obs": rng.standard_normal((n, obs_dim)),
            "action": rng.uniform(-1, 1, (n, act_dim)), "reward": rng.standard_normal(n), "terminated": np.zeros(n)})
    times = {k: defaultdict(list) for k in variants}

    def update(agent, times, iteration):  # SAC.update's eager path, phase by phase
        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            return out

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

    for k, agent in agents.items():  # warm-up (and compilation)
        for i in range(40):
            update(agent, times[k], i)
        times[k].clear()
    rounds = 10  # variants alternate in rounds, so that the machine's drift in speed hits both alike
    per_round = max(a.updates // rounds // 2 * 2, 2)
    total = dict.fromkeys(variants, 0.0)
    for r in range(rounds):
        for k, agent in agents.items():
            t0 = time.perf_counter()
            for i in range(per_round):
                update(agent, times[k], i)
            total[k] += time.perf_counter() - t0
    count = rounds * per_round
    total = {k: v / count * 1e3 for k, v in total.items()}
    print(f"{a.env_id}, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{count} updates per variant in {rounds} interleaved rounds (policy_frequency {args.policy_frequency})\n")
    print("| phase | " + " | ".join(f"{k}: ms per update (share)" for k in variants) + " |\n|-|"
          + "-|" * len(variants))
    for name in times["eager"]:
        cells = [f"{sum(times[k][name]) / count * 1e3:.3f} ({sum(times[k][name]) / count * 1e3 / total[k]:.0%})"
                 for k in variants]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(f"{total[k]:.2f}" for k in variants) + " |")
    if a.compile:
        print(f"\ncompiled / eager: {total['eager'] / total['compiled']:.2f}x faster per update")


if __name__ == "__main__":
    main()
