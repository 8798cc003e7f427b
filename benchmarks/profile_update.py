"""Where one SAC update's time goes: each phase of sac_env_reward.SAC's eager update timed with perf_counter; with
--compile, also the whole update, eager against compiled (sac_env_reward.py --compile compiles the update as one
program, so it has no phases to time), by kind of update; with --against REV, also the whole update of the SAC core
as it was at a git revision (the A/B of a change, more precise than bench_sac.py's, whose env steps add noise);
with --compile-options, also the update compiled with these inductor options added to compile_update's (an A/B of
a compiler setting, e.g. max_autotune=True max_autotune_gemm_backends=CPP,ATEN: inductor's C++ GEMM templates).
Variants run interleaved in rounds in one process. --flops also counts the arithmetic of one update (torch's flop
counter), ours against CleanRL's (benchmarks/cleanrl_sac.py), and divides it by this machine's rate for a 256 x 256
matmul: the time an update needs at the least, whatever the overhead around its matmuls.

torch.profiler is not used: on the 2-core CPU it inflates the in-place timings of elementwise ops on (2, 256, 256)
tensors by 5-10x (measured: a mul that takes 34 us under perf_counter shows as 250 us), which points at the wrong
places. The phases run exactly as SAC.update runs them (same methods, same order), on a replay buffer of random
transitions shaped like the env's, after a warm-up.

    python benchmarks/profile_update.py --env-id Hopper-v4 --updates 300 [--compile] [--against HEAD~1] [--flops]
    python benchmarks/profile_update.py --compile --compile-options max_autotune=True max_autotune_gemm_backends=CPP,ATEN
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
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
                   help="also the whole update, eager against compiled (sac_env_reward.py --compile), by kind")
    p.add_argument("--against", metavar="REV", default=None,
                   help="also the whole update of sac_env_reward.py at this git revision (eager, and compiled with "
                        "--compile), by kind: an A/B of a change to the update, interleaved in one process")
    p.add_argument("--compile-options", nargs="+", metavar="KEY=VALUE", default=[],
                   help="with --compile: also the update compiled with these inductor options (torch.compile's "
                        "options=) added to compile_update's; values are Python literals or strings")
    p.add_argument("--flops", action="store_true",
                   help="also the arithmetic of one update, ours against CleanRL's, and its time at the matmul rate")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    env = gym.make(a.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    modules = {"": sac}
    if a.against:
        from bench_sac import load_revision

        modules[f" at {a.against}"] = load_revision(a.against)
    agents = {}
    for suffix, module in modules.items():
        for compiled in (False, True) if a.compile else (False,):
            agents[("compiled" if compiled else "eager") + suffix] = module.SAC(
                module.Args(env_id=a.env_id, compile=compiled), obs_dim, env.action_space, torch.device("cpu"))
    if a.compile and a.compile_options:
        agents[f"compiled with {' '.join(a.compile_options)}"] = options_agent(a, obs_dim, env.action_space)
    args = agents["eager"].args
    rb = sac.ReplayBuffer(args.buffer_size, obs_dim, act_dim, torch.device("cpu"))
    rng, n = np.random.default_rng(0), 20_000
    rb.add({"obs": rng.standard_normal((n, obs_dim)), "next_obs": rng.standard_normal((n, obs_dim)),
            "action": rng.uniform(-1, 1, (n, act_dim)), "reward": rng.standard_normal(n), "terminated": np.zeros(n)})
    times = defaultdict(list)

    def update(agent, iteration):  # SAC.update's eager path, phase by phase
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
            with torch.no_grad():
                timed("target: Polyak", lambda: torch._foreach_lerp_(
                    list(agent.critic_target.parameters()), list(agent.critic.parameters()), args.tau))

    # kinds of update: (with actor updates, with Polyak update), as SAC.update picks them from the iteration
    cycle = range(args.policy_frequency * args.target_network_frequency)
    weights = Counter((i % args.policy_frequency == 0, i % args.target_network_frequency == 0) for i in cycle)
    kinds = sorted(weights)
    whole = {k: defaultdict(float) for k in agents}
    for i in range(40):  # warm-up (and compilation)
        update(agents["eager"], i)
        for agent in agents.values():
            agent.update(rb.sample(args.batch_size), i)
    times.clear()
    rounds = 10  # variants alternate in rounds, so that the machine's drift in speed hits both alike
    per_round = max(a.updates // rounds // 2 * 2, 2)
    for r in range(rounds):
        for i in range(per_round):
            update(agents["eager"], i)
        if len(agents) > 1:
            for kind in kinds:
                for k, agent in agents.items():
                    step = whole_update(agent, kind)
                    t0 = time.perf_counter()
                    for _ in range(per_round):
                        step(rb.sample(args.batch_size))
                    whole[k][kind] += time.perf_counter() - t0
    count = rounds * per_round
    total = sum(sum(v) for v in times.values()) / count * 1e3
    print(f"{a.env_id}, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{count} updates per variant in {rounds} interleaved rounds (policy_frequency {args.policy_frequency})\n")
    print("| phase (eager) | ms per update | share |\n|-|-|-|")
    for name, v in times.items():
        print(f"| {name} | {sum(v) / count * 1e3:.3f} | {sum(v) / count * 1e3 / total:.0%} |")
    print(f"| total | {total:.2f} | |")
    if len(agents) > 1:
        ms = {k: {kind_name(kind, args.policy_frequency): whole[k][kind] / count * 1e3 for kind in kinds}
              for k in agents}
        for k in agents:
            ms[k]["per update, the kinds weighted as they occur"] = sum(
                whole[k][kind] * w for kind, w in weights.items()) / len(cycle) / count * 1e3
        pairs = [("eager", "compiled")] if a.compile else []  # (slower, faster) columns compared
        if a.compile and a.compile_options:
            pairs.append(("compiled", f"compiled with {' '.join(a.compile_options)}"))
        if a.against:
            pairs += [(f"{m} at {a.against}", m) for m in (("eager", "compiled") if a.compile else ("eager",))]
        header = " | ".join(f"{k}: ms" for k in agents) + " | " + " | ".join(f"{x} / {y}" for x, y in pairs)
        print(f"\n| whole update, by kind | {header} |\n" + "|-" * (1 + len(agents) + len(pairs)) + "|")
        for row in ms["eager"]:
            cells = [f"{ms[k][row]:.2f}" for k in agents] + [f"{ms[x][row] / ms[y][row]:.3f}" for x, y in pairs]
            print(f"| {row} | " + " | ".join(cells) + " |")
    if a.flops:
        flops(agents["eager"], rb, env, weights)


def options_agent(a, obs_dim: int, action_space):
    """A compiled SAC whose compile_update adds a.compile_options to its inductor options (dynamo's cache is made
    large enough for the two compiled agents' kinds of update)."""
    import ast

    extra = {}
    for item in a.compile_options:
        key, _, value = item.partition("=")
        try:
            extra[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key] = value
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    real = sac.compile_update

    def compile_update(step, device):
        options = {"fallback_random": True, "cpp_wrapper": device.type == "cpu", **extra}
        return torch._dynamo.config.patch(trace_autograd_ops=True)(torch.compile(step, options=options))

    sac.compile_update = compile_update
    try:
        return sac.SAC(sac.Args(env_id=a.env_id, compile=True), obs_dim, action_space, torch.device("cpu"))
    finally:
        sac.compile_update = real


def whole_update(agent, kind: tuple[bool, bool]):
    """One kind of update as SAC.update runs it: compiled with --compile (agent.updates, fast_updates' wrappers); a
    core from before fast_updates (--against an old revision) compiled SAC.step itself."""
    updates = getattr(agent, "updates", None)
    if updates is not None:
        return updates[kind]
    return lambda batch: agent.step(batch, *kind)


def kind_name(kind: tuple[bool, bool], policy_frequency: int) -> str:
    """A kind of update, (with actor updates, with the Polyak update), as the tables name it."""
    actor, polyak = kind
    return "critic" + (f" + {policy_frequency} actor" if actor else "") + (" + Polyak" if polyak else "")


def flops(agent, rb, env, weights: Counter) -> None:
    """FLOPs of one update of each kind, ours (SAC.step) and CleanRL's (its update at an iteration of that kind),
    and the milliseconds they take at the rate of a dense 256 x 256 x 256 matmul on this machine."""
    import cleanrl_sac
    from torch.utils.flop_counter import FlopCounterMode

    args, b = agent.args, rb.sample(agent.args.batch_size)
    clean = cleanrl_sac.CleanRLSAC(cleanrl_sac.Args(env_id=args.env_id), b["obs"].shape[1], env.action_space)
    cycle = range(args.policy_frequency * args.target_network_frequency)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    ours, theirs = {}, {}
    for kind in weights:
        i = next(i for i in cycle if (i % args.policy_frequency == 0, i % args.target_network_frequency == 0) == kind)
        ours[kind] = count(lambda: agent.step(b, *kind))
        theirs[kind] = count(lambda: clean.update(i, b["obs"], b["action"], b["reward"], b["next_obs"],
                                                  b["terminated"]))
    x, y = torch.randn(256, 256), torch.randn(256, 256)
    for _ in range(50):
        torch.mm(x, y)
    t0 = time.perf_counter()
    for _ in range(500):
        torch.mm(x, y)
    rate = 500 * 2 * 256**3 / (time.perf_counter() - t0)
    mean = {k: sum(v[kind] * w for kind, w in weights.items()) / sum(weights.values())
            for k, v in (("ours", ours), ("CleanRL", theirs))}
    print(f"\n| one update's arithmetic | ours: MFLOP | CleanRL: MFLOP | CleanRL / ours |\n|-|-|-|-|")
    for kind in sorted(weights):
        print(f"| {kind_name(kind, args.policy_frequency)} | {ours[kind] / 1e6:.1f} | {theirs[kind] / 1e6:.1f} | "
              f"{theirs[kind] / ours[kind]:.2f}x |")
    print(f"| per update, the kinds weighted as they occur | {mean['ours'] / 1e6:.1f} | {mean['CleanRL'] / 1e6:.1f} | "
          f"{mean['CleanRL'] / mean['ours']:.2f}x |")
    print(f"| ms per update at the 256 x 256 matmul rate ({rate / 1e9:.0f} GFLOP/s) | {mean['ours'] / rate * 1e3:.2f} | "
          f"{mean['CleanRL'] / rate * 1e3:.2f} | |")


if __name__ == "__main__":
    main()
