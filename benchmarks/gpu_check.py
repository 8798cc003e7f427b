"""One command that measures the project on a GPU: every figure of docs/speed.md#gpu in one run, one table.

    python benchmarks/gpu_check.py --out gpu_check.json          # on one GPU: at most about 8 minutes (budgets)
    python benchmarks/gpu_check.py --sections memory cap --budget memory=900 cap=600   # the whole memory table
    python benchmarks/gpu_check.py --cpu --out /tmp/gpu_check.json                     # tiny configs (the test suite)
    python benchmarks/gpu_check.py --count-flops     # each family's arithmetic per frame, on the meta device: no GPU

Sections, in this order (--sections picks some):

    sac      SAC's learning phase on Hopper-v4 in this process: CleanRL's code (benchmarks/cleanrl_sac.py) against
             sac_env_reward.py eager, --compile, --cudagraphs and --compile --cudagraphs (benchmarks/bench_sac.py's
             runners). A variant that fails is a row with its one-line error.
    learn    Pendulum-v1 trained from one seed by sac_env_reward.py eager, with --cudagraphs (the default on CUDA)
             and with --compile --cudagraphs: each final evaluation return (the fast paths must learn as eager does).
    reward   the SDS reward of every diffusion family on its real architecture built from its config with random
             weights (benchmarks/bench_reward.py: SD 2.1-base 512 px, SDXL and SD3-medium 1024, ZeroScope 256, Wan 2.1
             1.3B 480, AnimateDiff 512): frames/s eager at several batch sizes and compiled (torch.compile, fixed
             shapes) at one, the arithmetic per rendered frame counted by torch.utils.flop_counter.FlopCounterMode
             (VAE encoder and denoiser apart) and the share of the GPU's bf16 peak it reaches.
    clip     CLIP ViT-L/14's reward: sac_clip.py's batched tensor preprocessing against the PIL processor per frame.
    main     the README's main command, `sac_sds.py --env-id Walker2d-v4 --prompt "a person walking"`, end to end in
             a child process, with an SD 2.1-base-architecture folder written by save_pretrained (random weights)
             as --model-id: summary.json's learning-phase steps/s and the child's peak CUDA memory.
    scripts  the video reward (demo/pendulum-motion + its motion adapter on Walker2d frames), sac_clip.py
             (demo/pendulum-clip) and eval_videos.py on both runs: ok or the error, and whether MuJoCo's renderers
             printed EGL errors at exit.
    memory   peak CUDA memory of the main command at each other family's defaults (its own pipeline folder, real
             text encoders included, random weights), a short run each.
    cap      the main command under a 24 GiB cap (torch.cuda.set_per_process_memory_fraction): a 24 GB card made of
             a bigger one; SD 2.1 first, then the other families.

The child processes run through this file's own wrapper (`gpu_check.py --child SCRIPT ARGS...`): it runs the script
with runpy as __main__, applies the cap named by $GPU_CHECK_CAP_GIB and, at exit, writes the process's peak memory
(torch.cuda.max_memory_allocated and max_memory_reserved; on the CPU the peak RSS) as JSON to $GPU_CHECK_PEAK_FILE.
The scripts themselves are not changed.

Time: each section has a budget in seconds (--budget NAME=SECONDS; what a section leaves unused goes to the next),
the run as a whole --total-budget (470 s). An item starts only if its estimated time fits what is left of its
section (the estimates are rough figures for one H200; --cpu has none); a child process still running at the end of
its section is stopped with SIGTERM (the scripts then checkpoint). What is skipped is a row that says so. The peak
of each GPU is a table of datasheet figures (dense bf16, no sparsity) looked up by torch.cuda.get_device_name();
--peak-tflops sets it. The rate of a large bf16 matmul measured on the device is printed beside it.

--cpu: tiny configs of every model, a few steps, every section, on the CPU (one torch thread), in about two minutes on
2 busy cores; torch.compile there uses the aot_eager backend (dynamo and AOT autograd as on CUDA, without inductor's
code generation, which takes a minute on a small CPU) and compiles one family's reward; --cudagraphs is a no-op on
the CPU, so --compile --cudagraphs is skipped; sdxl's, sd3's and zeroscope's memory folders are loaded in-process
instead of run; the cap cannot apply. Its figures mean nothing: it is there so that the GPU path cannot rot
(tests/test_benchmarks.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks", ROOT / "demo"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PEAK_FILE_ENV, CAP_ENV = "GPU_CHECK_PEAK_FILE", "GPU_CHECK_CAP_GIB"
SECTIONS = ("sac", "learn", "reward", "clip", "main", "scripts", "memory", "cap")
BUDGETS = {"sac": 95, "learn": 45, "reward": 125, "clip": 20, "main": 90, "scripts": 55, "memory": 50,
           "cap": 45}  # s, one H200
FAMILIES = ("sd21", "sdxl", "sd3", "zeroscope", "wan", "animatediff")
# Rough seconds on one H200, to skip what cannot finish in a section's budget (not measurements to quote)
ESTIMATES = {
    "sac": {"cleanrl": 25, "eager": 12, "compile": 70, "cudagraphs": 10, "compile+cudagraphs": 70},
    "learn": {"eager": 35, "cudagraphs": 15, "compile+cudagraphs": 75},
    "reward": {"sd21": 20, "sdxl": 15, "sd3": 15, "zeroscope": 10, "wan": 20, "animatediff": 15},
    "compile": {"sd21": 75, "sdxl": 110, "sd3": 110, "zeroscope": 90, "wan": 120, "animatediff": 100},
    "memory": {"sd21": 35, "sdxl": 60, "sd3": 90, "zeroscope": 45, "wan": 100, "animatediff": 50},
    "main": 80, "video": 20, "clip_script": 20, "eval": 15, "clip": 12,
}
# Dense bf16 tensor-core peak (no sparsity) from the vendors' datasheets, TFLOP/s; the first name found in
# torch.cuda.get_device_name() wins, so the more specific names come first
BF16_PEAK_TFLOPS = (
    ("GH200", 989.0), ("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("A40", 150.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)
GIB = 2**30


# ----- the child process wrapper: a script as __main__, its peak memory written at exit -----
def child(argv: list[str]) -> None:
    """`gpu_check.py --child SCRIPT ARGS...`: SCRIPT run as __main__ with ARGS; $GPU_CHECK_CAP_GIB caps this
    process's CUDA memory first; at exit $GPU_CHECK_PEAK_FILE gets the peak memory as JSON."""
    script, peak_file, cap = argv[0], os.environ.get(PEAK_FILE_ENV), os.environ.get(CAP_ENV)
    record: dict = {}
    if cap:
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * GIB / total), 0)
            record.update(cap_gib=float(cap), total_gib=total / GIB)
        else:
            record["cap"] = "not applied: no CUDA device"
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        record["rss_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record.update(cuda_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                          cuda_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
        if peak_file:
            Path(peak_file).write_text(json.dumps(record))


def one_line_error(stderr: str, rc: int) -> str:
    """A failed child's error in one line: its last `error:` line, else the exception line of its last traceback
    (not those Python prints for exceptions ignored in __del__ at exit), else its exit status."""
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][:300]
    found = None
    for i, line in enumerate(lines):
        if line.startswith("Traceback") and not (i and lines[i - 1].startswith("Exception ignored")):
            rest = [x for x in lines[i + 1:] if x and not x.startswith(" ")]
            found = rest[0] if rest else found
    return (found or f"exit status {rc}")[:300]


def run_child(script: str, args: list[str], cwd: Path, timeout: float, cap_gib: float | None = None) -> dict:
    """SCRIPT ARGS in a child process through child(), stopped with SIGTERM after timeout seconds (the scripts then
    checkpoint and exit). Returns rc, the one-line error, wall time, the peak memory record, whether MuJoCo's
    renderers printed EGL errors at exit, and the output's tail."""
    peak_file = cwd / f"peak_{time.monotonic_ns()}.json"
    env = {**os.environ, PEAK_FILE_ENV: str(peak_file), "MUJOCO_GL": os.environ.get("MUJOCO_GL") or "egl",
           "HF_HUB_OFFLINE": "1"}
    env.pop(CAP_ENV, None)
    if cap_gib:
        env[CAP_ENV] = str(cap_gib)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(ROOT / script), *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = False
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        stopped = True
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    result = {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "stopped": stopped,
              "peak": json.loads(peak_file.read_text()) if peak_file.is_file() else {},
              "egl_noise_at_exit": "Exception ignored" in err and "EGL" in err,
              "tail": (out[-1500:] + "\n" + err[-2500:]).strip()}
    result["error"] = (None if proc.returncode == 0 else f"stopped at the budget after {result['wall_s']:.0f} s"
                       if stopped else one_line_error(err, proc.returncode))
    return result


def peak_text(peak: dict) -> str:
    if "cuda_allocated_gib" in peak:
        return f"{peak['cuda_allocated_gib']:.2f} GiB allocated ({peak['cuda_reserved_gib']:.2f} GiB reserved)"
    if "rss_peak_gib" in peak:
        return f"RSS {peak['rss_peak_gib']:.2f} GiB (no CUDA)"
    return "peak not recorded"


# ----- the run: rows, sections, budgets -----
class Check:
    """The rows measured so far, the sections' clocks and budgets, and the settings of the mode (GPU or --cpu)."""

    def __init__(self, a: argparse.Namespace):
        self.a, self.cpu = a, a.cpu
        self.device = torch.device("meta" if a.count_flops else "cpu" if a.cpu else "cuda")
        self.dtype = torch.float32 if a.cpu else torch.bfloat16
        self.rows: list[dict] = []
        self.t_start = time.perf_counter()
        self.budgets = dict(BUDGETS) if not a.cpu else {k: 600 for k in BUDGETS}
        for item in a.budget:
            name, _, seconds = item.partition("=")
            self.budgets[name] = float(seconds)
        self.section, self.t_section, self.carry = None, 0.0, 0.0
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.peak_tflops, self.peak_source = self.find_peak()
        self.folders: dict[str, tuple[Path, list[str]]] = {}

    # --- budgets ---
    def start(self, section: str) -> None:
        """A section starts; what the sections before it left unused of their budgets is added to its own."""
        if self.section in self.budgets:
            self.carry = max(0.0, self.left())
        self.section, self.t_section = section, time.perf_counter()
        print(f"\n== {section} (budget {self.budgets[section]:.0f} s + {self.carry:.0f} s left by the sections "
              "before) ==", flush=True)

    def left(self) -> float:
        """Seconds left to the current section: its budget and what earlier ones left, within the whole run's."""
        section = self.budgets[self.section] + self.carry - (time.perf_counter() - self.t_section)
        return min(section, self.a.total_budget - (time.perf_counter() - self.t_start))

    def fits(self, what: str, estimate: float) -> bool:
        """Whether an item of about `estimate` seconds (on one H200; 0 under --cpu) fits what is left; if not, a row
        that says it was skipped."""
        estimate = 0 if self.cpu else estimate
        if self.left() >= estimate and self.left() > 0:
            return True
        self.add(what, "skipped", f"about {estimate:.0f} s needed, {max(0, self.left()):.0f} s left of the "
                                  f"'{self.section}' budget; run it with --sections {self.section} --budget "
                                  f"{self.section}=SECONDS", skipped=True)
        return False

    def add(self, what: str, value: str, note: str = "", **data) -> None:
        row = {"section": self.section, "what": what, "value": value, "note": note, **data,
               "at_s": round(time.perf_counter() - self.t_start, 1)}
        self.rows.append(row)
        print(f"  [{row['at_s']:.0f} s] {what}: {value}" + (f"  ({note})" if note else ""), flush=True)

    def error(self, what: str, e: BaseException) -> None:
        line = (str(e).strip().splitlines() or [""])[0][:300]
        self.add(what, "error", f"{type(e).__name__}: {line}", error=f"{type(e).__name__}: {line}")

    # --- the device ---
    def find_peak(self) -> tuple[float | None, str]:
        if self.a.peak_tflops:
            return self.a.peak_tflops, "--peak-tflops"
        if self.device.type != "cuda":
            return None, f"none for {self.device.type}"
        name = torch.cuda.get_device_name(self.device)
        for key, tflops in BF16_PEAK_TFLOPS:
            if key in name:
                return tflops, f"datasheet, dense bf16 ({key})"
        return None, f"'{name}' is not in the table: give --peak-tflops"

    def share(self, flops_per_s: float) -> str:
        return f"{100 * flops_per_s / (self.peak_tflops * 1e12):.0f}%" if self.peak_tflops else "-"

    def header(self) -> dict:
        import diffusers
        import transformers

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return {
            "device": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else
                       "meta (shapes only: arithmetic counted, nothing run)" if self.device.type == "meta" else
                       f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0],
            "commit": commit.stdout.strip() or "unknown",
            "mode": ("--count-flops, " if self.a.count_flops else "") + ("--cpu (tiny configs)" if self.cpu else
                                                                          "real configs"),
            "bf16_peak_tflops": self.peak_tflops, "peak_source": self.peak_source,
            "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
        }

    def matmul_rate(self) -> None:
        """The rate of one large matmul in the run's dtype: what the device's tensor cores reach in practice."""
        n = 256 if self.cpu else 8192
        x = torch.randn(n, n, device=self.device, dtype=self.dtype)
        for _ in range(3):
            x @ x
        sync(self.device)
        reps, t0 = 5 if self.cpu else 50, time.perf_counter()
        for _ in range(reps):
            x @ x
        sync(self.device)
        rate = 2 * n**3 * reps / (time.perf_counter() - t0)
        self.add(f"{n}x{n} matmul, {dtype_name(self.dtype)}", f"{rate / 1e12:.1f} TFLOP/s",
                 f"{self.share(rate)} of the {self.peak_tflops} TFLOP/s peak ({self.peak_source})"
                 if self.peak_tflops else self.peak_source, tflops=rate / 1e12)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def compile_backend(cpu: bool):
    """--cpu: torch.compile with the aot_eager backend (the scripts' inductor options dropped): dynamo and AOT
    autograd trace what they trace on CUDA, without inductor's code generation."""
    if not cpu:
        yield
        return
    original = torch.compile

    def aot_eager(model=None, **kwargs):
        kwargs.pop("options", None), kwargs.pop("mode", None)
        kwargs["backend"] = "aot_eager"
        return original(model, **kwargs) if model is not None else original(**kwargs)

    torch.compile = aot_eager
    try:
        yield
    finally:
        torch.compile = original


def fresh() -> None:
    """Forget compiled graphs and free cached memory between items."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----- section sac: SAC against CleanRL's code, in this process -----
def section_sac(c: Check) -> None:
    import bench_sac

    env_id = "Hopper-v4"
    starts, steps = (300, 40) if c.cpu else (1000, 1500)
    variants = {"cleanrl": "CleanRL's code (benchmarks/cleanrl_sac.py)", "eager": "sac_env_reward.py, eager",
                "cudagraphs": "--cudagraphs", "compile": "--compile", "compile+cudagraphs": "--compile --cudagraphs"}
    base = None
    for key, what in variants.items():
        what = f"SAC {env_id} learning phase: {what}"
        if c.cpu and key == "compile+cudagraphs":
            c.add(what, "skipped", "--cpu: --cudagraphs does nothing on a CPU, so this is the --compile row",
                  skipped=True)
            continue
        if not c.fits(what, ESTIMATES["sac"][key]):
            continue
        try:
            with compile_backend(c.cpu):
                if key == "cleanrl":
                    sps = bench_sac.run_cleanrl(env_id, starts, steps, seed=1)
                else:
                    sps = bench_sac.run_ours(env_id, starts, steps, 1, compile="compile" in key,
                                             cudagraphs="cudagraphs" in key)
        except Exception as e:  # a variant that fails is a row, not the end of the run
            c.error(what, e)
            continue
        finally:
            fresh()
        base = sps if key == "cleanrl" else base
        c.add(what, f"{sps:.1f} steps/s", (f"{sps / base:.2f}x CleanRL's; " if base else "") + f"on {c.device.type}",
              steps_per_s=sps, ratio=sps / base if base else None, learning_starts=starts, steps=steps)


# ----- section learn: the fast paths learn as eager mode does -----
def section_learn(c: Check) -> None:
    """Pendulum-v1 trained by sac_env_reward.py eager, with --cudagraphs (the default on CUDA) and with --compile
    --cudagraphs, from one seed: the final evaluation return of each. A captured or compiled update draws its random
    numbers in another order than eager, so the runs are not bit-equal; each should reach what eager reaches (the
    suite's CPU test asks > -400 at 6000 steps; random actions score about -1200)."""
    import bench_sac

    total, starts = (300, 100) if c.cpu else (6000, 1000)
    variants = {"eager": (False, False), "cudagraphs": (False, True), "compile+cudagraphs": (True, True)}
    for key, (compile, cudagraphs) in variants.items():
        what = f"SAC Pendulum-v1 learns, {total} steps: {key}"
        if not c.fits(what, ESTIMATES["learn"][key]):
            continue
        try:
            with compile_backend(c.cpu):
                summary = bench_sac.train_ours("Pendulum-v1", starts, total - starts, 1, compile,
                                               cudagraphs=cudagraphs, eval_episodes=5)
        except Exception as e:
            c.error(what, e)
            continue
        finally:
            fresh()
        ret = float(np.mean(summary["eval_returns"]))
        fell = {k: v for k, v in summary.get("fast_paths", {}).items() if v.startswith("fell back")}
        c.add(what, f"eval return {ret:.0f}", f"learning phase {summary.get('learning_sps', 0):.0f} steps/s on "
              f"{c.device.type}" + "".join(f"; --{k} {v}" for k, v in fell.items()), eval_return=ret,
              learning_sps=summary.get("learning_sps"), fast_paths=summary.get("fast_paths"))


# ----- section reward: each diffusion family's reward, eager and compiled, and its share of the peak -----
def tiny_parts(name: str):
    """The tiny configuration of a family for --cpu: (family class, denoiser, VAE, noise schedule, conditioning
    shapes) as bench_reward.ARCHITECTURES' functions return them."""
    from diffusers import (AutoencoderKL, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, MotionAdapter,
                           SD3Transformer2DModel, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel,
                           WanTransformer3DModel)

    import bench_reward

    def vae(channels=4, **extra):
        return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                             latent_channels=channels, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=16, **extra)

    def unet(cross, **extra):
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross, attention_head_dim=8,
            norm_num_groups=32, **extra)

    ddpm, flow = bench_reward.sd_schedule, lambda: FlowMatchEulerDiscreteScheduler(shift=3.0)
    if name == "sd21":
        return "SDFamily", unet(32), vae(), ddpm(), {"text": (77, 32)}
    if name == "sdxl":
        return "SDXLFamily", unet(64, addition_embed_type="text_time", addition_time_embed_dim=8,
                                  projection_class_embeddings_input_dim=6 * 8 + 32), \
            vae(scaling_factor=0.13025), ddpm(), {"text": (77, 64), "pooled": (32,)}
    if name == "sd3":
        return "SD3Family", SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
            pos_embed_max_size=8), vae(scaling_factor=1.5, shift_factor=0.1), flow(), \
            {"text": (77 + 16, 64), "pooled": (64,)}
    if name == "zeroscope":
        return "ZeroScopeFamily", UNet3DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=32), vae(), ddpm(), {"text": (77, 32)}
    if name == "wan":
        return "WanFamily", WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32), AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                                   temperal_downsample=[False, True, True]), flow(), \
            {"text": (16, 32)}
    if name == "animatediff":
        return "SDFamily", UNetMotionModel.from_unet2d(unet(32), tiny_adapter()), vae(), ddpm(), {"text": (77, 32)}
    raise ValueError(name)


def tiny_adapter():
    from diffusers import MotionAdapter

    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                         motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False)


def build_reward_model(c: Check, name: str):
    """sac_sds.SDSReward on the family's real architecture (tiny under --cpu), built on the device, random weights."""
    import bench_reward

    resolution = model_resolution(c, name)
    build = (lambda: tiny_parts(name)) if c.cpu else bench_reward.ARCHITECTURES[name][0]
    return bench_reward.build_family(name, resolution, c.device, c.dtype, parts=on_device(c, build))


def on_device(c: Check, build):
    """build() with the device as torch's default (random initialisation of billions of weights takes seconds on a
    GPU, minutes on a CPU); on the CPU if that fails."""
    try:
        with torch.device(c.device):
            return build()
    except Exception as e:
        print(f"  building on {c.device} failed ({type(e).__name__}: {str(e)[:200]}); building on the CPU", flush=True)
        fresh()
        return build()


def count_flops(model, frame_size: int) -> dict:
    """FLOPs per rendered frame of one reward step (torch.utils.flop_counter, 2 per multiply-add), the VAE encoder
    and the denoiser apart: one batch element (a frame; a window for video families), divided by its frames.
    Attention runs on its math backend here, so that it is counted on every device (the counter knows CUDA's fused
    attention kernels, not the CPU's) and the same as by them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import bench_reward

    frames, t, noise = bench_reward.sds_inputs(model, 1, frame_size, np.random.default_rng(0))
    vae, denoiser = model.family.vae, model.family.denoiser
    parts = {"vae_encoder": 0, "denoiser": 0}

    def counted(fn, part):  # a counter of its own around the part (the outer one counts it too)
        def wrapper(*args, **kwargs):
            with FlopCounterMode(display=False) as inner:
                out = fn(*args, **kwargs)
            parts[part] += inner.get_total_flops()
            return out
        return wrapper

    vae.encode, denoiser.forward = counted(vae.encode, "vae_encoder"), counted(denoiser.forward, "denoiser")
    try:
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            bench_reward.sds_reward_fn(model)(frames, t, noise)
    finally:
        del vae.encode, denoiser.forward  # the classes' own methods again
    n = len(frames)
    return {"total": counter.get_total_flops() / n, **{k: v / n for k, v in parts.items()}}


def section_reward(c: Check) -> None:
    import bench_reward

    frame_size = 32 if c.cpu else 256
    repeats = 1 if c.cpu else 3
    flops = {}
    for name in FAMILIES:  # eager first, all families; then compiled, as the budget allows
        label = f"SDS reward {name}"
        if not c.fits(f"{label}, eager", ESTIMATES["reward"][name]):
            continue
        try:
            model = build_reward_model(c, name)
            flops[name] = count_flops(model, frame_size)
            batches = [1, 2] if c.cpu else ([1, 8, 32, 64] if name == "sd21" else [1, 8])
            rate = measure_reward(c, model, {"eager": bench_reward.sds_reward_fn(model)}, batches, frame_size, repeats)
        except Exception as e:
            c.error(f"{label}, eager", e)
            continue
        finally:
            model = None
            fresh()
        add_reward_row(c, name, "eager", rate["eager"], flops[name])
    for name in FAMILIES:
        label = f"SDS reward {name}, torch.compile"
        if name not in flops:
            continue
        if c.cpu and name != "sd21":
            c.add(label, "skipped", "--cpu compiles one family (tracing a diffusion model takes long on a CPU)",
                  skipped=True)
            continue
        if not c.fits(label, ESTIMATES["compile"][name]):
            continue
        try:
            model = build_reward_model(c, name)
            with compile_backend(c.cpu):
                fn = torch.compile(bench_reward.sds_reward_fn(model), dynamic=False)
            batch = 2 if c.cpu else (32 if name == "sd21" else 8)
            rate = measure_reward(c, model, {"compile": fn}, [batch], frame_size, repeats)
        except Exception as e:
            c.error(label, e)
            continue
        finally:
            model = fn = None
            fresh()
        add_reward_row(c, name, "compile", rate["compile"], flops[name])


def measure_reward(c: Check, model, fns: dict, batches: list[int], frame_size: int, repeats: int) -> dict:
    """{mode: {batch: (frames/s, first call's seconds)}} through bench_reward.measure (one untimed call first,
    which compiles in compile mode; then repeats interleaved, the median)."""
    import bench_reward

    rng = np.random.default_rng(0)
    window = model.context_size if model.video else 1
    steps = {mode: (lambda b, fn=fn: (lambda inputs: (lambda: fn(*inputs)))(
        bench_reward.sds_inputs(model, b, frame_size, rng))) for mode, fn in fns.items()}
    t0 = time.perf_counter()
    times = bench_reward.measure(steps, batches, repeats, c.device)
    first = time.perf_counter() - t0 - sum(sum(v) for v in times.values())
    return {mode: {b: (b * window / statistics.median(times[mode, b]), first) for b in batches} for mode in fns}


def add_reward_row(c: Check, name: str, mode: str, rates: dict, flops: dict) -> None:
    resolution = model_resolution(c, name)
    batches = sorted(rates)
    fps = [rates[b][0] for b in batches]
    shares = [c.share(f * flops["total"]) for f in fps]
    what = f"SDS reward {name}, {resolution} px, {dtype_name(c.dtype)}, {mode}, batch {' / '.join(map(str, batches))}"
    unit, scale = ("TFLOP", 1e12) if flops["total"] > 1e10 else ("MFLOP", 1e6)
    note = (f"{flops['total'] / scale:.3f} {unit} a frame (denoiser {flops['denoiser'] / scale:.3f} + VAE encoder "
            f"{flops['vae_encoder'] / scale:.3f}); {' / '.join(shares)} of the bf16 peak")
    if mode == "compile":
        note += f"; first call (compiling) {rates[batches[0]][1]:.0f} s"
    c.add(what, " / ".join(f"{f:.1f}" for f in fps) + " frames/s", note, family=name, mode=mode,
          batches=batches, frames_per_s=fps, tflop_per_frame=flops["total"] / 1e12,
          tflop_denoiser=flops["denoiser"] / 1e12, tflop_vae_encoder=flops["vae_encoder"] / 1e12,
          share_of_peak=[f * flops["total"] / (c.peak_tflops * 1e12) if c.peak_tflops else None for f in fps],
          first_call_s=rates[batches[0]][1])


# ----- section clip: CLIP's tensor path against PIL per frame -----
def section_clip(c: Check) -> None:
    import bench_reward

    what = f"CLIP {'tiny' if c.cpu else 'ViT-L/14'} reward, sac_clip.py's tensor path / PIL per frame"
    if not c.fits(what, ESTIMATES["clip"]):
        return
    batches = [1, 4] if c.cpu else [1, 8, 32, 64]
    try:
        args = SimpleNamespace(dtype="auto", frame_size=256, clip_preprocessing_only=False, tiny=c.cpu)
        steps, desc = bench_reward.clip_steps(args, c.device, c.dtype)
        times = bench_reward.measure({k: steps[k] for k in ("tensor", "pil")}, batches, 1 if c.cpu else 3, c.device)
    except Exception as e:
        c.error(what, e)
        return
    finally:
        fresh()
    fps = {m: [b / statistics.median(times[m, b]) for b in batches] for m in ("tensor", "pil")}
    c.add(what + f", batch {' / '.join(map(str, batches))}",
          " / ".join(f"{t:.0f}" for t in fps["tensor"]) + " against " + " / ".join(f"{p:.0f}" for p in fps["pil"])
          + " frames/s", desc.split("; ", 1)[-1], batches=batches, tensor_frames_per_s=fps["tensor"],
          pil_frames_per_s=fps["pil"])


# ----- pipeline folders for the child runs: every family's, real (random weights) or tiny -----
def clip_text(tokenizer, size: str, projection: bool = False):
    """A CLIP text tower: L (CLIP ViT-L/14's: SD 1.5, SDXL's first, SD3's first), H (OpenCLIP ViT-H: SD 2.x,
    ZeroScope), G (OpenCLIP bigG: SDXL's and SD3's second) or tiny; with a projection (pooled embedding) or not."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dims = {"L": (768, 3072, 12, 12, "quick_gelu"), "H": (1024, 4096, 23, 16, "gelu"),
            "G": (1280, 5120, 32, 20, "gelu"), "tiny": (32, 37, 2, 4, "quick_gelu")}[size]
    config = CLIPTextConfig(vocab_size=49408 if size != "tiny" else len(tokenizer.get_vocab()), hidden_size=dims[0],
                            intermediate_size=dims[1], num_hidden_layers=dims[2], num_attention_heads=dims[3],
                            hidden_act=dims[4], projection_dim=dims[0] if size != "tiny" else 32,
                            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_tokenizer(folder: Path):
    """A T5 (unigram) tokenizer over single characters: no vocabulary file can be downloaded."""
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -3.0) for ch in string.ascii_lowercase + string.digits + ".,'-!?"]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(folder)
    return T5Tokenizer.from_pretrained(folder)


def t5_encoder(tokenizer, tiny: bool, umt5: bool = False):
    """T5 v1.1 XXL's encoder (SD3's third text encoder; UMT5-XXL's for Wan: its 256k vocabulary), or a tiny one."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    size = (dict(d_model=32 if umt5 else 64, d_kv=8, d_ff=32, num_layers=1, num_heads=4,
                 vocab_size=len(tokenizer.get_vocab())) if tiny else
            dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 vocab_size=256384 if umt5 else 32128))
    return model_cls(config_cls(feed_forward_proj="gated-gelu", **size)).eval()


def build_pipeline(c: Check, name: str, files: Path):
    """The family's complete diffusers pipeline (real architecture with its real text encoders, random weights; tiny
    under --cpu) on c.device, and AnimateDiff's motion adapter (None for the others). Character-level tokenizers
    stand in for the real vocabularies (their files go under `files`); the embedding tables keep the real sizes."""
    import diffusers
    from train_pendulum_models import write_char_tokenizer

    import bench_reward

    tiny = c.cpu
    torch.manual_seed(0)
    tokenizer = write_char_tokenizer(files / f"{name}_tokenizer", max_length=77)

    def build():
        if tiny:  # (AnimateDiff: the plain UNet; its motion adapter goes in its own folder)
            _, denoiser, vae, scheduler, _ = tiny_parts("sd21" if name == "animatediff" else name)
        elif name == "animatediff":
            denoiser, vae, scheduler = bench_reward.sd15_unet(), bench_reward.sd_vae(), bench_reward.sd_schedule()
        else:
            _, denoiser, vae, scheduler, _ = bench_reward.ARCHITECTURES[name][0]()
        adapter = None  # AnimateDiff: an SD 1.5 pipeline, and the motion adapter apart (--motion-adapter-id)
        if name == "animatediff":
            adapter = tiny_adapter() if tiny else diffusers.MotionAdapter()
        kind = "tiny" if tiny else None
        if name in ("sd21", "zeroscope", "animatediff"):
            text = clip_text(tokenizer, kind or ("L" if name == "animatediff" else "H"))
            cls = diffusers.TextToVideoSDPipeline if name == "zeroscope" else diffusers.StableDiffusionPipeline
            extra = {} if name == "zeroscope" else dict(safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False)
            pipe = cls(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=denoiser, scheduler=scheduler, **extra)
        elif name == "sdxl":
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae, text_encoder=clip_text(tokenizer, kind or "L"), tokenizer=tokenizer,
                text_encoder_2=clip_text(tokenizer, kind or "G", projection=True), tokenizer_2=tokenizer,
                unet=denoiser, scheduler=scheduler)
        elif name == "sd3":
            t5_tok = t5_tokenizer(files / f"{name}_t5_tokenizer")
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=denoiser, scheduler=scheduler, vae=vae,
                text_encoder=clip_text(tokenizer, kind or "L", projection=True), tokenizer=tokenizer,
                text_encoder_2=clip_text(tokenizer, kind or "G", projection=True), tokenizer_2=tokenizer,
                text_encoder_3=t5_encoder(t5_tok, tiny), tokenizer_3=t5_tok)
        elif name == "wan":
            t5_tok = t5_tokenizer(files / f"{name}_t5_tokenizer")
            pipe = diffusers.WanPipeline(tokenizer=t5_tok, text_encoder=t5_encoder(t5_tok, tiny, umt5=True),
                                         transformer=denoiser, vae=vae, scheduler=scheduler)
        else:
            raise ValueError(name)
        return pipe, adapter

    return on_device(c, build)


def save_pipeline(c: Check, name: str, folder: Path) -> list[str]:
    """The family's pipeline folder (build_pipeline), written with save_pretrained and loaded by the scripts through
    --model-id, in the run's dtype. Returns the flags the main command needs besides --model-id (AnimateDiff: its
    motion adapter's folder, written next to it)."""
    pipe, adapter = build_pipeline(c, name, folder.parent)
    pipe.to(c.dtype)
    pipe.save_pretrained(folder)
    flags = []
    if adapter is not None:
        adapter.to(c.dtype).save_pretrained(folder.parent / f"{folder.name}_adapter")
        flags = ["--motion-adapter-id", str(folder.parent / f"{folder.name}_adapter")]
    del pipe, adapter
    fresh()
    return flags



def pipeline_folder(c: Check, name: str) -> tuple[Path, list[str]]:
    """The family's pipeline folder (written once per run) and the main command's extra flags for it."""
    if name not in c.folders:
        folder = c.tmp / "models" / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        flags = save_pipeline(c, name, folder)
        print(f"  wrote the {name} pipeline folder in {time.perf_counter() - t0:.0f} s", flush=True)
        c.folders[name] = (folder, flags)
    return c.folders[name]


def drop_folder(c: Check, name: str) -> None:
    """Frees the disk a real pipeline folder takes (SD3's and Wan's are over 10 GB): the next use writes it again."""
    if name in c.folders and name != "sd21":
        folder, _ = c.folders.pop(name)
        for path in folder.parent.glob(f"{name}*"):
            shutil.rmtree(path, ignore_errors=True)


MAIN_PROMPT = ("--env-id", "Walker2d-v4", "--prompt", "a person walking")


def main_command(c: Check, name: str, total: int, starts: int, run_name: str) -> list[str]:
    """The README's main command with the family's folder: the given step counts, no evaluation or checkpoint
    schedule, no buffer in the final checkpoint, no progress bar; everything else at its defaults."""
    folder, flags = pipeline_folder(c, name)
    small = ["--batch-size", "16", "--resolution", "32"] if c.cpu else []  # (--cpu: tiny, fast)
    return [*MAIN_PROMPT, "--model-id", str(folder), *flags, "--total-timesteps", str(total), "--learning-starts",
            str(starts), "--eval-episodes", "0", "--checkpoint-every", "0", "--no-save-buffer", "--no-progress",
            "--run-name", run_name, *small]


def run_dir(c: Check, section: str) -> Path:
    folder = c.tmp / section
    folder.mkdir(exist_ok=True)
    return folder


# ----- section main: the README's main command end to end -----
def section_main(c: Check) -> None:
    what = "the main command, sac_sds.py --env-id Walker2d-v4 --prompt \"a person walking\", SD 2.1-base architecture"
    total, starts = (60, 30) if c.cpu else (3000, 1000)
    if not c.fits(what, ESTIMATES["main"]):
        return
    try:
        args = main_command(c, "sd21", total, starts, "main")
    except Exception as e:
        c.error(what, e)
        return
    cwd = run_dir(c, "main")
    r = run_child("sac_sds.py", args, cwd, c.left())
    summary = cwd / "runs" / "main" / "summary.json"
    summary = json.loads(summary.read_text()) if summary.is_file() else {}
    sps, fast = summary.get("learning_sps"), summary.get("fast_paths", {})
    value = f"learning phase {sps:.1f} steps/s" if sps else ("error" if r["error"] else "no learning_sps")
    note = (f"{total} steps, {starts} random; peak {peak_text(r['peak'])}; {r['wall_s']:.0f} s in all"
            + "".join(f"; --{k} {v}" for k, v in fast.items() if v.startswith("fell back"))
            + (f"; {r['error']}" if r["error"] else ""))
    c.add(what, value, note, learning_sps=sps, fast_paths=fast, peak=r["peak"], wall_s=r["wall_s"], error=r["error"],
          egl_noise_at_exit=r["egl_noise_at_exit"], tail=r["tail"] if r["error"] else None)
    c.main_peak = r["peak"] if not r["error"] else None


# ----- section scripts: the video and CLIP scripts and eval_videos.py -----
def section_scripts(c: Check) -> None:
    cwd = run_dir(c, "scripts")
    total, starts = (40, 20) if c.cpu else (1500, 500)
    common = ["--total-timesteps", str(total), "--learning-starts", str(starts), "--eval-episodes", "1",
              "--checkpoint-every", "0", "--no-progress", *(["--batch-size", "16"] if c.cpu else [])]
    motion = ["--model-id", str(ROOT / "demo/pendulum-motion"), "--motion-adapter-id",
              str(ROOT / "demo/pendulum-motion-adapter")]
    clip = ["--clip-model-id", str(ROOT / "demo/pendulum-clip")]
    runs = {
        "video": ("sac_sds.py", [*MAIN_PROMPT, *motion, *common, "--run-name", "video"],
                  "sac_sds.py, the video reward (demo/pendulum-motion + adapter), Walker2d frames"),
        "clip_script": ("sac_clip.py", [*MAIN_PROMPT, *clip, *common, "--run-name", "clip"],
                        "sac_clip.py (demo/pendulum-clip), Walker2d frames"),
        "eval": ("eval_videos.py", [str(cwd / "runs" / "video"), str(cwd / "runs" / "clip"), *clip, "--sds-model-id",
                                    motion[1], "--sds-motion-adapter-id", motion[3], "--episodes", "1", "--out",
                                    str(cwd / "eval"), "--no-progress"],
                 "eval_videos.py on both runs, CLIP and SDS scores"),
    }
    device = "CPU" if c.cpu else "CUDA"
    for key, (script, args, what) in runs.items():
        what = f"{what}, on {device}"
        if not c.fits(what, ESTIMATES[key]):
            continue
        r = run_child(script, args, cwd, c.left())
        if key == "eval" and not r["error"]:
            failed = [row for row in csv_rows(cwd / "eval" / "runs.csv") if row.get("error")]
            r["error"] = f"{len(failed)} run(s) not evaluated: {failed[0]['error']}" if failed else None
        c.add(what, "ok" if not r["error"] else "error",
              (r["error"] + "; " if r["error"] else "") + f"{r['wall_s']:.0f} s, peak {peak_text(r['peak'])}; EGL "
              f"errors at exit: {'yes' if r['egl_noise_at_exit'] else 'no'}", ok=not r["error"], error=r["error"],
              peak=r["peak"], egl_noise_at_exit=r["egl_noise_at_exit"], tail=r["tail"] if r["error"] else None)


def csv_rows(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return [{"error": f"{path.name} was not written"}]
    with open(path) as f:
        return list(csv.DictReader(f))


# ----- sections memory and cap: the main command at each family's defaults -----
def memory_run(c: Check, name: str, cap_gib: float | None) -> None:
    total, starts = (40, 20) if c.cpu else (400, 200)
    cap = f" under a {cap_gib:g} GiB cap" if cap_gib else ""
    what = f"the main command at {name}'s defaults{cap}: peak memory"
    reuse = name == "sd21" and not cap_gib and getattr(c, "main_peak", None)  # the main section's run
    if not c.fits(what, 0 if reuse else ESTIMATES["memory"][name]):
        return
    try:
        if c.cpu and not cap_gib and name in ("sdxl", "sd3", "zeroscope"):  # a child costs seconds of imports
            import sac_sds

            t0 = time.perf_counter()
            sac_sds.SDSReward.from_pretrained(str(pipeline_folder(c, name)[0]), "a person walking")
            c.add(what, "loaded", f"--cpu: the folder written and loaded by SDSReward.from_pretrained in this "
                                  f"process in {time.perf_counter() - t0:.0f} s, no child run (wan and animatediff "
                                  "run the script)", family=name)
            return
        args = main_command(c, name, total, starts, f"{name}{'_cap' if cap_gib else ''}")
        if reuse:
            r = {"peak": c.main_peak, "error": None, "wall_s": 0.0, "egl_noise_at_exit": False, "tail": ""}
            steps = "from the main section's run"
        else:
            r = run_child("sac_sds.py", args, run_dir(c, c.section), c.left(), cap_gib=cap_gib)
            steps = f"{total} steps, {starts} random"
    except Exception as e:
        c.error(what, e)
        return
    finally:
        if c.section == "cap" or not c.a.keep_models:
            drop_folder(c, name)
    peak = r["peak"]
    fits = peak["cuda_reserved_gib"] <= c.a.cap_gib if "cuda_reserved_gib" in peak else None
    note = f"{steps}; {r['wall_s']:.0f} s" + (f"; {r['error']}" if r["error"] else "")
    if cap_gib and "cap" in peak:
        note += f"; cap {peak['cap']}"
    if not cap_gib and fits is not None:
        note += f"; fits {c.a.cap_gib:g} GiB: {'yes' if fits else 'no'} (reserved)"
    c.add(what, ("ok, " if cap_gib and not r["error"] else "error, " if r["error"] else "") + peak_text(peak), note,
          family=name, cap_gib=cap_gib, peak=peak, error=r["error"], tail=r["tail"] if r["error"] else None)


def section_memory(c: Check) -> None:
    for name in FAMILIES:
        memory_run(c, name, None)


def section_cap(c: Check) -> None:
    for name in FAMILIES:
        if c.cpu and name != "sd21":
            c.add(f"the main command at {name}'s defaults under a {c.a.cap_gib:g} GiB cap", "skipped",
                  "--cpu: no CUDA memory to cap; the sd21 run walks the path", skipped=True)
            continue
        memory_run(c, name, c.a.cap_gib)


# ----- the table -----
def table(header: dict, rows: list[dict]) -> str:
    lines = [f"{header['device']}, {header['date']}; torch {header['torch']} (CUDA {header['cuda']}), diffusers "
             f"{header['diffusers']}, transformers {header['transformers']}, Python {header['python']}; commit "
             f"{header['commit']}; {header['mode']}; bf16 peak: {header['bf16_peak_tflops']} TFLOP/s "
             f"({header['peak_source']}); random weights built from each family's config",
             f"`{header['command']}`", "", "| section | what | measured | note |", "|---|---|---|---|"]
    for r in rows:
        cells = [r["section"], r["what"], r["value"], r["note"]]
        lines.append("| " + " | ".join(str(x).replace("|", "/").replace("\n", " ") for x in cells) + " |")
    return "\n".join(lines)


def section_flops(c: Check) -> None:
    """--count-flops: each family's arithmetic per rendered frame on the meta device (shapes only: no GPU, no
    weights, seconds on a CPU), as the reward section counts it on the GPU."""
    frame_size = 32 if c.cpu else 256
    for name in FAMILIES:
        what = f"SDS reward {name}: arithmetic per rendered frame"
        try:
            model = build_reward_model(c, name)
            flops = count_flops(model, frame_size)
        except Exception as e:
            c.error(what, e)
            continue
        finally:
            model = None
        unit, scale = ("TFLOP", 1e12) if flops["total"] > 1e10 else ("MFLOP", 1e6)
        c.add(f"{what}, {model_resolution(c, name)} px", f"{flops['total'] / scale:.3f} {unit}",
              f"denoiser {flops['denoiser'] / scale:.3f} + VAE encoder {flops['vae_encoder'] / scale:.3f}",
              family=name, tflop_per_frame=flops["total"] / 1e12, tflop_denoiser=flops["denoiser"] / 1e12,
              tflop_vae_encoder=flops["vae_encoder"] / 1e12)


def model_resolution(c: Check, name: str) -> int:
    import bench_reward

    return 32 if c.cpu else bench_reward.ARCHITECTURES[name][1]


RUNNERS = {"sac": section_sac, "learn": section_learn, "reward": section_reward, "clip": section_clip, "main": section_main,
           "scripts": section_scripts, "memory": section_memory, "cap": section_cap}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="also write the header and every row as JSON to this file")
    p.add_argument("--cpu", action="store_true", help="tiny configs, a few steps, every section, on the CPU")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="the sections to run")
    p.add_argument("--budget", nargs="+", default=[], metavar="SECTION=SECONDS",
                   help=f"a section's time budget (defaults: {', '.join(f'{k} {v}' for k, v in BUDGETS.items())})")
    p.add_argument("--total-budget", type=float, default=None,
                   help="seconds for the whole run (default 470 on a GPU, none under --cpu)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's bf16 peak in TFLOP/s (default: the datasheet table, by the device's name)")
    p.add_argument("--cap-gib", type=float, default=24.0, help="the cap section's memory cap (a 24 GB card)")
    p.add_argument("--count-flops", action="store_true",
                   help="only count each family's arithmetic per frame, on the meta device (no GPU needed)")
    p.add_argument("--keep-models", action="store_true",
                   help="keep each family's pipeline folder after the memory section (for the cap section)")
    a = p.parse_args(argv)
    for item in a.budget:
        name, sep, seconds = item.partition("=")
        try:
            float(seconds)
        except ValueError:
            sep = ""
        if not sep or name not in SECTIONS:
            p.exit(2, f"error: --budget {item}: give SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)}, "
                      f"e.g. --budget memory=600\n")
    if a.total_budget is None:
        a.total_budget = float("inf") if a.cpu else 470.0
    if not a.cpu and not a.count_flops and not torch.cuda.is_available():
        p.exit(2, "error: torch sees no CUDA device: run on a GPU, or give --cpu for the tiny CPU check\n")
    if a.out and not Path(a.out).resolve().parent.is_dir():
        p.exit(2, f"error: --out {a.out}: its folder does not exist; create it or give another path\n")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ["MUJOCO_GL"] = os.environ["MUJOCO_GL"] or "egl"  # set but empty is unset
    if a.cpu and not a.count_flops:  # one thread per process: on a small shared CPU, torch's threads wait on each other
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    c = Check(a)
    header = c.header()
    print(f"{header['device']}; torch {header['torch']}; diffusers {header['diffusers']}; transformers "
          f"{header['transformers']}; {header['mode']}; bf16 peak {c.peak_tflops} ({c.peak_source})", flush=True)
    try:
        if a.count_flops:
            c.budgets["flops"] = float("inf")
            c.start("flops")
            section_flops(c)
        else:
            c.section = "device"
            c.matmul_rate()
            for name in a.sections:
                c.start(name)
                RUNNERS[name](c)
    finally:
        shutil.rmtree(c.tmp, ignore_errors=True)
    header["wall_s"] = round(time.perf_counter() - c.t_start, 1)
    text = table(header, c.rows)
    print(f"\n{text}\n\n{header['wall_s']:.0f} s in all")
    result = {"header": header, "rows": c.rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
