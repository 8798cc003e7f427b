"""Why `--compile` does not speed up SAC on the CPU here: a ReLU compiled for training is much slower than eager.

When gradients are needed, torch.compile (inductor, C++ backend) saves ReLU's backward mask as a bool tensor, and
on this AVX2 machine the generated code stores that mask element by element. Eager PyTorch saves the float output
instead. The critic's forward inside the actor loss (weights detached, so only the masks are saved) hits this.
This script times relu(2x) on a (2, 256, 256) tensor, eager and compiled, with and without autograd.

    python benchmarks/compile_relu_mask.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, relu(2x) on {tuple(x.shape)}, us per call")
    print(f"| | eager | compiled |\n|-|-|-|")
    print(f"| forward, autograd on | {timed(lambda: f(x)):.0f} | {timed(lambda: compiled(x)):.0f} |")
    with torch.no_grad():
        print(f"| forward, no_grad | {timed(lambda: f(x)):.0f} | {timed(lambda: compiled(x)):.0f} |")


if __name__ == "__main__":
    main()
