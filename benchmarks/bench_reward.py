"""Reward throughput of the text rewards: frames/s batched against one frame at a time.

    python benchmarks/bench_reward.py --which sds --resolution 256 --batch-sizes 1 2 4 8 --repeats 2
    python benchmarks/bench_reward.py --which sds --families sd21 sdxl sd3 zeroscope wan --resolution 128 \
        --batch-sizes 1 2 --repeats 2 --modes eager                                                 # on a CPU
    python benchmarks/bench_reward.py --which sds --families sd21 sdxl sd3 zeroscope wan \
        --batch-sizes 1 8 32 64 --modes eager compile                                               # on a GPU

sds: sac_sds.SDSReward on the real architecture of each model family (docs/method.md#model-families), built from
its config with random weights, so nothing is downloaded (speed does not depend on the weights): sd21
(stable-diffusion-2-1-base, docs/method.md#stable-diffusion-21-base-architecture), sdxl (SDXL base 1.0), sd3 (SD3
medium), zeroscope (zeroscope_v2 / ModelScope 1.7B), wan (Wan 2.1 T2V 1.3B) and animatediff (the v1-5-2 motion
adapter in SD 1.5's UNet). One reward = encode rendered uint8
frames (resize on the device, VAE encoder) + one denoiser pass on [z_t, z_t] with the [unconditional, prompt]
conditioning + the two terms, exactly as training computes it. The text encoders are not built or timed: the prompt
is embedded once per run (random conditioning of the shapes they give stands in). For the video families a batch
element is one window of the family's default length (16 frames; Wan 17: 5 latent frames), and frames/s counts
rendered frames. Batch size 1 is the per-step computation of the original code.

clip: sac_clip.CLIPReward on the ViT-L/14 architecture (openai/clip-vit-large-patch14's config and image
processor), random weights. Four modes, measured in the same run: the whole reward with sac_clip.py's batched
tensor preprocessing on the device ("tensor") or with the checkpoint's PIL image processor, which works frame by
frame on the CPU ("pil"), and each preprocessing alone ("tensor-prep", "pil-prep"); --modes does not apply. The
table gives frames/s and the ratio tensor / PIL. On a 2-core CPU (ViT-L/14 takes seconds per frame there):

    python benchmarks/bench_reward.py --which clip --batch-sizes 1 4 --repeats 2 --threads 1
    python benchmarks/bench_reward.py --which clip --batch-sizes 1 4 16 64 --repeats 10 --threads 1 \
        --clip-preprocessing-only

Each reward model has its own section (functions named after it) and its own --which choice. Modes: eager, and
torch.compile of the whole reward step (each batch size compiles its own graph; compile time is reported apart).
Dtype: fp32 on the CPU, bf16 on CUDA (--dtype to change). Batch sizes run interleaved --repeats times; the median
is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# ----- sds: TADPoLe on each diffusers family's real architecture -----
def sd_vae(**extra):
    """SD's VAE (also SDXL's, ZeroScope's; SD3's with 16 channels)."""
    from diffusers import AutoencoderKL

    config = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                  block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
    return AutoencoderKL(**{**config, **extra})


def sd_schedule():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def sd21_base():
    """stable-diffusion-2-1-base (docs/method.md#stable-diffusion-21-base-architecture): UNet 866M, OpenCLIP-H text."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return "SDFamily", unet, sd_vae(), sd_schedule(), {"text": (77, 1024)}


def sdxl_base():
    """stable-diffusion-xl-base-1.0: UNet 2.6B (10 transformer layers at the lowest level), two CLIP text towers."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    return "SDXLFamily", unet, sd_vae(scaling_factor=0.13025, sample_size=1024), sd_schedule(), \
        {"text": (77, 2048), "pooled": (1280,)}


def sd3_medium():
    """stable-diffusion-3-medium: MMDiT 2B (24 layers, 24 heads x 64), 16-channel VAE, CLIP-L + CLIP-G + T5 text
    (77 + 256 tokens of 4096)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                        caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                        pos_embed_max_size=192)
    vae = sd_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                 use_post_quant_conv=False, sample_size=1024)
    return "SD3Family", transformer, vae, FlowMatchEulerDiscreteScheduler(shift=3.0), \
        {"text": (333, 4096), "pooled": (2048,)}


def zeroscope_v2():
    """zeroscope_v2_576w / ModelScope text-to-video-ms-1.7b: UNet3D 1.4B over (C, F, h, w), SD's VAE per frame."""
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=1024, attention_head_dim=64, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    )
    return "ZeroScopeFamily", unet, sd_vae(), sd_schedule(), {"text": (77, 1024)}


def wan21_1_3b():
    """Wan2.1-T2V-1.3B: WanTransformer3DModel 1.3B (30 layers, 12 heads x 128), its causal video VAE, UMT5 text (512
    tokens of 4096)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                        num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        eps=1e-6, rope_max_seq_len=1024)
    return "WanFamily", transformer, AutoencoderKLWan(), FlowMatchEulerDiscreteScheduler(shift=3.0), \
        {"text": (512, 4096)}


def sd15_unet(**extra):
    """stable-diffusion-v1-5's UNet (860M): CLIP ViT-L/14 text (77 x 768), 8-channel attention heads."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **extra)


def animatediff_v152():
    """AnimateDiff: guoyww/animatediff-motion-adapter-v1-5-2 (MotionAdapter's defaults are its config) inserted into
    stable-diffusion-v1-5's UNet (UNetMotionModel 1.3B), SD's VAE per frame, CLIP ViT-L/14 text."""
    from diffusers import MotionAdapter, UNetMotionModel

    unet = UNetMotionModel.from_unet2d(sd15_unet(), MotionAdapter())
    return "SDFamily", unet, sd_vae(), sd_schedule(), {"text": (77, 768)}


ARCHITECTURES = {"sd21": (sd21_base, 512), "sdxl": (sdxl_base, 1024), "sd3": (sd3_medium, 1024),
                 "zeroscope": (zeroscope_v2, 256), "wan": (wan21_1_3b, 480), "animatediff": (animatediff_v152, 512)}


def build_family(name: str, resolution: int, device: torch.device, dtype: torch.dtype, parts=None):
    """sac_sds.SDSReward on a family's real architecture, built from its config with random weights (speed does
    not depend on them), and random [unconditional, prompt] conditioning of the shapes its text encoders give. The
    text encoders are not built: the prompt is embedded once per run, untimed. parts: what an ARCHITECTURES
    function returns, to build another configuration (benchmarks/gpu_check.py --cpu passes tiny ones)."""
    from types import SimpleNamespace

    import sac_sds

    family, denoiser, vae, scheduler, shapes = parts or ARCHITECTURES[name][0]()
    cond = {k: torch.randn(2, *shape) for k, shape in shapes.items()}
    video = {"video": True} if type(denoiser).__name__ == "UNetMotionModel" else {}  # AnimateDiff
    model = getattr(sac_sds, family)(SimpleNamespace(vae=vae.to(dtype), scheduler=scheduler), denoiser.to(dtype),
                                     cond, dtype, **video)
    return sac_sds.SDSReward(model, resolution).to(device)


def sds_reward_fn(model):
    """One reward step as training computes it: encode uint8 frames, one denoiser pass, the two terms. Image
    families take (frames, t, noise) with one t per frame; video families one t per window of model.context_size
    frames (frames and noise window-major)."""
    window = model.context_size if model.video else None

    def reward(frames, t, noise):
        latents = model.encode(frames)
        if window is None:
            return model(latents, t, noise)
        windows = latents.view(len(t), window, *latents.shape[1:])
        return model.reward(windows, t, noise.view(len(t), window, *noise.shape[1:]))[2]

    return reward


def sds_inputs(model, batch: int, frame_size: int, rng: np.random.Generator):
    """Random uint8 frames, noise levels and noise for `batch` elements (frames, or windows of a video family)."""
    device = model.device
    n = batch * (model.context_size if model.video else 1)
    frames = torch.from_numpy(rng.integers(0, 256, (n, frame_size, frame_size, 3), dtype=np.uint8))
    return frames, torch.full((batch,), 450, device=device), torch.randn(n, *model.latent_shape, device=device)


def sds_steps(args, device: torch.device, dtype: torch.dtype, family: str = "sd21"):
    """(name, batch size) -> a function scoring one batch, for each mode; plus a description. A batch is frames
    for image families, windows of --context-size frames for video ones."""
    resolution = args.resolution or ARCHITECTURES[family][1]
    model = build_family(family, resolution, device, dtype)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    window = model.context_size if model.video else None

    def make_step(batch: int, fn):
        inputs = sds_inputs(model, batch, args.frame_size, rng)
        return lambda: fn(*inputs)

    reward = sds_reward_fn(model)
    fns = {"eager": reward}
    if "compile" in args.modes:
        fns["compile"] = torch.compile(reward, dynamic=False)
    unit = f"windows of {window} frames" if window else "frames"
    desc = (f"sds {family}: {ARCHITECTURES[family][0].__doc__.split(':')[0]} architecture ({params:.0f}M parameters "
            f"without the text encoders), {resolution} px ({model.latent_shape[1]}x{model.latent_shape[2]} latents), "
            f"frames {args.frame_size} px, {dtype}; batch = {unit}; frames/s counts rendered frames")
    return {mode: (lambda b, fn=fn: make_step(b, fn)) for mode, fn in fns.items() if mode in args.modes}, desc, window


# ----- clip: VLM-RM's CLIP reward on ViT-L/14 -----
def build_clip_vit_l14(device: torch.device, dtype: torch.dtype, tiny: bool = False):
    """sac_clip.CLIPReward with openai/clip-vit-large-patch14's architecture and image processor (CLIPImageProcessor's
    defaults are that checkpoint's), random weights. A character-level tokenizer stands in for CLIP's BPE vocabulary:
    the prompts are embedded once per run, untimed. tiny: 2-layer towers 32 wide (the same 224 px input), for a
    quick run on a CPU."""
    import json
    import tempfile

    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    import sac_clip

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if tiny else {}
    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]) | small,
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14) | small,
        projection_dim=16 if tiny else 768,
    )
    with torch.device(device):
        model = CLIPModel(config).to(dtype)
    return sac_clip.CLIPReward(model, tokenizer, CLIPImageProcessorPil(), ["a person walking"], ["a person"], alpha=0.5)


def clip_steps(args, device: torch.device, dtype: torch.dtype):
    """Four ways to score a batch of uint8 frames, each a mode: the whole reward (preprocessing + ViT-L/14 + formula)
    with the batched tensor preprocessing of sac_clip.py ("tensor") or with the checkpoint's PIL image processor,
    which works frame by frame ("pil"), and the two preprocessings alone ("tensor-prep", "pil-prep"). Where
    torchvision is installed, also transformers' own batched processor, its torchvision backend
    ("torchvision-prep")."""
    import sac_clip
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    dtype = sac_clip.resolve_dtype(args.dtype, device)  # auto: bf16 on CUDA, fp32 on the CPU
    model = build_clip_vit_l14(device, dtype, tiny=getattr(args, "tiny", False))
    processor = CLIPImageProcessorPil()  # the reference: PIL, frame by frame
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rng = np.random.default_rng(0)

    def pil_prep(frames: np.ndarray) -> torch.Tensor:
        return processor(images=list(frames), return_tensors="pt")["pixel_values"].to(device)

    def tensor_prep(frames: np.ndarray) -> torch.Tensor:
        return model.preprocess(torch.from_numpy(frames))

    def pil_reward(frames: np.ndarray) -> torch.Tensor:
        return model.reward_from_embeddings(model.embed_images(pil_prep(frames)))

    fns = {"pil-prep": pil_prep, "tensor-prep": tensor_prep}
    library = CLIPImageProcessor()  # transformers 5: the torchvision backend, or the PIL one without torchvision
    if not isinstance(library, CLIPImageProcessorPil):
        fns["torchvision-prep"] = lambda frames: library(images=torch.from_numpy(frames).to(device).permute(0, 3, 1, 2),
                                                         return_tensors="pt")["pixel_values"]
    if not args.clip_preprocessing_only:
        fns.update({"pil": pil_reward, "tensor": model.forward})

    def make_step(batch: int, fn):
        frames = rng.integers(0, 256, (batch, args.frame_size, args.frame_size, 3), dtype=np.uint8)
        return lambda: fn(frames)

    frames = rng.integers(0, 256, (4, args.frame_size, args.frame_size, 3), dtype=np.uint8)
    level = 1 / 255 / min(processor.image_std)
    agreement = []
    for mode in ("tensor-prep", "torchvision-prep"):
        if mode in fns:  # against PIL: the share of pixel values off by more than float rounding, the largest gap
            diff = (fns[mode](frames).cpu() - pil_prep(frames).cpu()).abs()
            agreement.append(f"{mode} differs from pil-prep on {100 * (diff > 1e-5).float().mean():.2f}% of the pixel "
                             f"values, by at most {diff.max() / level:.1f} uint8 levels")
    name = "tiny" if getattr(args, "tiny", False) else "ViT-L/14"
    desc = (f"clip: {name} architecture ({params:.0f}M parameters), random weights, {dtype}; frames "
            f"{args.frame_size} px -> 224 (bicubic resize, center crop); " + "; ".join(agreement))
    return {mode: (lambda b, fn=fn: make_step(b, fn)) for mode, fn in fns.items()}, desc


def clip_report(times: dict, desc: str) -> None:
    fps = {key: key[1] / statistics.median(t) for key, t in times.items()}
    modes = {m for m, _ in times}
    columns = ["batch", "prep: PIL per frame", "prep: tensor", "tensor / PIL"]
    if "torchvision-prep" in modes:
        columns += ["prep: torchvision", "tensor / torchvision"]
    if "pil" in modes:
        columns += ["reward: PIL", "reward: tensor", "tensor / PIL"]
    print(f"\n{desc}\nframes/s:\n| " + " | ".join(columns) + " |\n" + "|-" * len(columns) + "|")
    for b in sorted({b for _, b in times}):
        p, t = fps["pil-prep", b], fps["tensor-prep", b]
        row = [f"{b}", f"{p:.1f}", f"{t:.1f}", f"{t / p:.2f}x"]
        if "torchvision-prep" in modes:
            row += [f"{fps['torchvision-prep', b]:.1f}", f"{t / fps['torchvision-prep', b]:.2f}x"]
        if "pil" in modes:
            row += [f"{fps['pil', b]:.2f}", f"{fps['tensor', b]:.2f}", f"{fps['tensor', b] / fps['pil', b]:.2f}x"]
        print("| " + " | ".join(row) + " |")


# ----- the measurement, shared by the reward models -----
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(steps: dict, batch_sizes: list[int], repeats: int, device: torch.device) -> dict:
    """{(mode, batch): [seconds per call, ...]} after one untimed warm-up call (which compiles, in compile mode)."""
    calls = {(mode, b): make(b) for mode, make in steps.items() for b in batch_sizes}
    times: dict = {key: [] for key in calls}
    with torch.inference_mode():
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            sync(device)
            print(f"  warm-up {key[0]:>7} batch {key[1]:>3}: {time.perf_counter() - t0:7.2f} s", flush=True)
        for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits every setting alike
            for key, call in calls.items():
                t0 = time.perf_counter()
                call()
                sync(device)
                times[key].append(time.perf_counter() - t0)
    return times


def report(times: dict, desc: str, window: int | None = None) -> None:
    base = statistics.median(times[("eager", min(b for m, b in times if m == "eager"))]) if any(
        m == "eager" for m, _ in times) else None
    print(f"\n{desc}")
    print(f"{'mode':>8} {'batch':>5} {'s/batch':>9} {'frames/s':>9} {'vs batch 1':>11} {'vs eager 1':>11}")
    f = window or 1  # rendered frames per batch element
    for mode in dict.fromkeys(m for m, _ in times):
        batches = sorted(b for m, b in times if m == mode)
        one = statistics.median(times[(mode, batches[0])]) / batches[0]  # seconds per element at the smallest batch
        for b in batches:
            s = statistics.median(times[(mode, b)])
            vs_eager = f"{base / (s / b):10.2f}x" if base is not None else "-"
            print(f"{mode:>8} {b:>5} {s:9.3f} {b * f / s:9.2f} {one / (s / b):10.2f}x {vs_eager:>11}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--which", nargs="+", choices=["sds", "clip"], default=["sds"], help="reward models to measure")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (median reported)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="auto: bf16 on CUDA (clip: fp16), fp32 on the CPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--frame-size", type=int, default=256, help="rendered frame size in pixels (sac_*.py --render-size)")
    p.add_argument("--families", nargs="+", choices=list(ARCHITECTURES), default=["sd21"],
                   help="sds: the architectures to measure (sd21, sdxl, sd3: frames; zeroscope, wan, animatediff: "
                        "windows)")
    p.add_argument("--resolution", type=int, default=None,
                   help="sds: model input size (default: each family's own: 512, 1024, 1024, 256, 480, 512)")
    p.add_argument("--clip-preprocessing-only", action="store_true",
                   help="clip: time the two preprocessings only (fast: affords more batch sizes and repeats)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; batch sizes {args.batch_sizes}; modes {args.modes}; "
          f"{args.repeats} repeats")
    for which in args.which:
        if which == "clip":
            steps, desc = clip_steps(args, device, dtype)
            print(desc)
            clip_report(measure(steps, args.batch_sizes, args.repeats, device), desc)
            continue
        for family in args.families:
            steps, desc, window = sds_steps(args, device, dtype, family)
            print(desc, flush=True)
            report(measure(steps, args.batch_sizes, args.repeats, device), desc, window)
            del steps  # the next architecture needs the memory


if __name__ == "__main__":
    main()
