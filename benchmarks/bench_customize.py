"""What a motion customisation (customize_motion.py) of the real models costs: the trained parameter set, counted, and
the arithmetic of one training step, counted on the real architectures (random weights on torch's meta device: no
memory, no compute), turned into GPU time at an assumed fraction of the GPU's peak.

    python benchmarks/bench_customize.py                         # ZeroScope v2 576w and AnimateDiff (SD 1.5 + v1-5-2)
    python benchmarks/bench_customize.py --batch-size 2 --peak-tflops 790 --utilization 0.4 --steps 600

zeroscope: zeroscope_v2_576w (UNet3DConditionModel 1.4B, benchmarks/bench_reward.py's config), windows of 24 frames
at 576 x 320 px (its own clips); animatediff: Stable Diffusion 1.5's UNet with guoyww/animatediff-motion-adapter-v1-5-2
inserted (UNetMotionModel), windows of 16 frames at 512 x 512 px. A step is the forward and backward pass of the
epsilon loss on --batch-size windows (torch.utils.flop_counter), as customize_motion.py runs it, plus AdamW on the
trained parameters (negligible). Not measured on a GPU: the GPU time is FLOPs / (peak x utilisation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import customize_motion  # noqa: E402


def zeroscope():
    from bench_reward import zeroscope_v2

    unet = zeroscope_v2()[1]
    return unet, (4, 24, 40, 72), 1024, lambda z, t, text: unet(z, t, encoder_hidden_states=text).sample


def animatediff():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = UNet2DConditionModel(  # stable-diffusion-v1-5's UNet
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,  # v1-5-2's config
                            motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                            use_motion_mid_block=True)
    model = UNetMotionModel.from_unet2d(unet, adapter)
    return model, (4, 16, 64, 64), 768, lambda z, t, text: model(z, t, encoder_hidden_states=text).sample


MODELS = {"zeroscope": zeroscope, "animatediff": animatediff}


def count(name: str, batch: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, shape, text_dim, call = MODELS[name]()
        trained = customize_motion.trained_parameters(model, ("temporal", "cross-kv"))
        groups = {g: sum(p.numel() for n, p in trained.items() if customize_motion.group_of(n) == g)
                  for g in ("temporal", "cross-kv")}
        model.requires_grad_(False)
        for p in trained.values():
            p.requires_grad_(True)
        frames = shape[1]
        z = torch.randn(batch, *shape)
        text = torch.randn(batch * (frames if name == "animatediff" else 1), 77, text_dim)
        t = torch.randint(0, 1000, (batch,))
        with FlopCounterMode(display=False) as counter:
            eps = call(z, t, text)
            torch.nn.functional.mse_loss(eps, torch.randn_like(eps)).backward()
    return {"parameters": sum(p.numel() for p in model.parameters()), "trained": sum(groups.values()), **groups,
            "flops": counter.get_total_flops(), "window": shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=1, help="windows per step")
    parser.add_argument("--steps", type=int, default=600, help="steps of a customisation")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's bf16 peak (H200: about 790)")
    parser.add_argument("--utilization", type=float, default=0.4, help="the fraction of the peak reached")
    args = parser.parse_args()
    rows = ["| model | parameters | trained: temporal | cross-attention K/V | all trained | window (C, F, h, w) | "
            "TFLOP per step | GPU s per step | GPU minutes for the steps |", "|-|-|-|-|-|-|-|-|-|"]
    for name in args.models:
        r = count(name, args.batch_size)
        seconds = r["flops"] / (args.peak_tflops * 1e12 * args.utilization)
        rows.append(f"| {name} | {r['parameters'] / 1e9:.2f} B | {r['temporal'] / 1e6:.0f} M | {r['cross-kv'] / 1e6:.1f} M "
                    f"| {r['trained'] / 1e6:.0f} M | {tuple(r['window'])} x {args.batch_size} | {r['flops'] / 1e12:.1f} | "
                    f"{seconds:.2f} | {seconds * args.steps / 60:.1f} |")
        print(rows[-1], flush=True)
    print(f"\n{args.steps} steps, batch {args.batch_size}, at {args.utilization:.0%} of {args.peak_tflops:.0f} TFLOP/s")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
