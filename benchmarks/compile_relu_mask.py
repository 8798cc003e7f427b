"""Why sac_env_reward.py's critic, under torch.compile, writes the ReLU of its pass in the actor loss as (x + |x|)/2.

When gradients are needed, torch.compile (inductor, C++ backend) saves ReLU's backward mask as a bool tensor, and
on this AVX2 machine the generated code stores that mask element by element. Eager PyTorch saves the float output
instead. The critic's forward inside the actor loss (weights detached, so only the masks would be saved) hit this,
and made `--compile` slower than eager until the critic used `_relu_float_grad` there. This script times relu(2x)
on a (2, 256, 256) tensor, eager and compiled, with and without autograd, and the float-grad form compiled.

    python benchmarks/compile_relu_mask.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sac_env_reward as sac  # noqa: E402


def timed(fn, n: int = 300) -> float:
    for _ in range(30):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    x = torch.randn(2, 256, 256, requires_grad=True)

    def f(t):
        return F.relu(t * 2.0)

    compiled = torch.compile(f)
    compiled_float_grad = torch.compile(lambda t: sac._relu_float_grad(t * 2.0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, relu(2x) on {tuple(x.shape)}, us per call")
    print(f"| | eager | compiled | compiled, (x + abs(x)) / 2 |\n|-|-|-|-|")
    print(f"| forward, autograd on | {timed(lambda: f(x)):.0f} | {timed(lambda: compiled(x)):.0f} | "
          f"{timed(lambda: compiled_float_grad(x)):.0f} |")
    with torch.no_grad():
        print(f"| forward, no_grad | {timed(lambda: f(x)):.0f} | {timed(lambda: compiled(x)):.0f} | "
              f"{timed(lambda: compiled_float_grad(x)):.0f} |")


if __name__ == "__main__":
    main()
