"""Shared test fixtures: tiny models built from configs and saved with save_pretrained, so that the scripts load
them through the same from_pretrained(model_id) path users run with hub ids (no model hub is reachable in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# ----- running the scripts (tests run them for real: as subprocesses, or in-process through train()) -----
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))
os.environ["MUJOCO_GL"] = os.environ.get("MUJOCO_GL") or "egl"  # unset or empty: EGL
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one CPU thread per worker (and per script it runs): two workers with
    os.environ["OMP_NUM_THREADS"] = "1"   # two threads each on two cores made torch's threads wait on each other
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The heavy tests (real SAC runs, the Meta-World environment) first: started early, they end with the others
    on two workers instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def run_script(script: str, *args: str, cwd: Path, timeout: float = 600, check: bool = True,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `python ROOT/script args...` in cwd; output captured as text. check: fail the test on a non-zero exit.
    env: variables to set over this process's, None to unset one."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All TensorBoard scalars of a run folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class RecordingLogger:
    """The parts of the core's Logger a reward source uses: scalar(), and writer.add_text for the prompt table."""

    def __init__(self):
        self.scalars, self.texts = {}, {}
        self.writer = self

    def scalar(self, tag, value, step):
        self.scalars[tag] = float(value)

    def add_text(self, tag, text, step):
        self.texts[tag] = text


@pytest.fixture
def one_thread():
    """One CPU thread: faster on small shared machines, and CPU kernels then treat every batch row alike (with
    several threads, rows split across threads may round differently; the zero-reward tests need identical rows)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh working directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----- tiny models -----


def write_tiny_clip_tokenizer(folder: Path):
    """A CLIP tokenizer over single characters (one token per character), 77 positions: the Pendulum world's
    tokenizer (demo/train_pendulum_models.py)."""
    from train_pendulum_models import write_char_tokenizer

    return write_char_tokenizer(folder, max_length=77)


def make_tiny_unet(cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
    )


def tiny_clip_text_config(tokenizer, hidden: int = 32, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                          eos_token_id=1, pad_token_id=1, **extra)


def tiny_vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                         latent_channels=latent_channels, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=16, **extra)


def sd_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def save_tiny_stable_diffusion(path: Path, seed: int = 0) -> Path:
    """A complete StableDiffusionPipeline folder: 16 px images, 8x8x4 latents, 32-wide CLIP text encoder."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = write_tiny_clip_tokenizer(path.parent / (path.name + "_tokenizer_files"))
    text_encoder = CLIPTextModel(tiny_clip_text_config(tokenizer))
    vae = tiny_vae()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=make_tiny_unet(),
                                   scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def save_tiny_motion_adapter(path: Path, seed: int = 0) -> Path:
    """An AnimateDiff MotionAdapter that fits the tiny UNet above (same blocks and layers per block)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Folder of a tiny Stable Diffusion pipeline, usable as --model-id."""
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("models") / "tiny-stable-diffusion")


@pytest.fixture(scope="session")
def tiny_motion_adapter(tmp_path_factory) -> Path:
    """Folder of a tiny AnimateDiff motion adapter for tiny_sd, usable as --motion-adapter-id."""
    return save_tiny_motion_adapter(tmp_path_factory.mktemp("models") / "tiny-motion-adapter")


def tiny_towers(vocab: dict, positions: int) -> dict:
    """The text and vision towers of the tiny contrastive checkpoints (CLIP, SigLIP, X-CLIP): 2 layers each, width 32,
    32x32 images in 8x8 patches; the text tower over the character-level vocabulary, end-of-text as its padding."""
    eos = vocab["<|endoftext|>"]
    return dict(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=positions,
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos),
                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=32, patch_size=8))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """Folder of a tiny CLIP checkpoint with random weights, usable as --clip-model-id: CLIPModel (2-layer text and
    vision towers, 32x32 images, 16-dim embeddings), the character-level tokenizer above (77 positions, so whole
    captions fit) and a CLIPImageProcessor that resizes the shortest side to 36 and center-crops 32."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder = tmp_path_factory.mktemp("models") / "tiny-clip"
    tokenizer = write_tiny_clip_tokenizer(folder.parent / "tiny-clip_tokenizer_files")
    # (CLIP's text tower pools at the first end-of-text token)
    config = CLIPConfig(**tiny_towers(tokenizer.get_vocab(), 77), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ----- tiny models of the other diffusers families (docs/method.md#model-families) -----


def save_tiny_sdxl(path: Path, seed: int = 0) -> Path:
    """A StableDiffusionXLPipeline folder: two CLIP text encoders (32 wide; the second with a 32-dim projection),
    whose penultimate states concatenate to the UNet's 64-dim cross-attention; text_time added conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = write_tiny_clip_tokenizer(path.parent / (path.name + "_tokenizer_files"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(scaling_factor=0.13025), text_encoder=CLIPTextModel(tiny_clip_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(tiny_clip_text_config(tokenizer, projection_dim=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=sd_scheduler())
    pipe.save_pretrained(path)
    return path


def save_tiny_sd3(path: Path, seed: int = 0) -> Path:
    """A StableDiffusion3Pipeline folder: SD3Transformer2DModel (2 layers, 4 heads x 8, patch 2) over 8x8x4 latents
    with a shift_factor, two CLIP text encoders (32 wide, 32-dim projections: joint dim 64, pooled 64), no T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = write_tiny_clip_tokenizer(path.parent / (path.name + "_tokenizer_files"))
    encoders = [CLIPTextModelWithProjection(tiny_clip_text_config(tokenizer, projection_dim=32)) for _ in range(2)]
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=8)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(scaling_factor=1.5, shift_factor=0.1), text_encoder=encoders[0], tokenizer=tokenizer,
        text_encoder_2=encoders[1], tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(path)
    return path


def save_tiny_zeroscope(path: Path, seed: int = 0) -> Path:
    """A TextToVideoSDPipeline folder (ModelScope / ZeroScope): UNet3DConditionModel over (C, F, 8, 8) latents."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = write_tiny_clip_tokenizer(path.parent / (path.name + "_tokenizer_files"))
    unet = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    pipe = TextToVideoSDPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(tiny_clip_text_config(tokenizer)),
                                 tokenizer=tokenizer, unet=unet, scheduler=sd_scheduler())
    pipe.save_pretrained(path)
    return path


def write_tiny_t5_tokenizer(folder: Path):
    """A T5 (unigram) tokenizer over single characters, as Wan's UMT5 tokenizer is loaded (AutoTokenizer)."""
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ".,'-!?"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_wan(path: Path, seed: int = 0) -> Path:
    """A WanPipeline folder: WanTransformer3DModel (2 layers, 2 heads x 12, patch (1, 2, 2)), the causal video VAE
    AutoencoderKLWan (16 latent channels, 8x spatial and 4x temporal compression), a 1-layer UMT5 encoder."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = write_tiny_t5_tokenizer(path.parent / (path.name + "_tokenizer_files"))
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer.get_vocab()), d_model=32, d_kv=8, d_ff=32,
                                               num_layers=1, num_heads=4)).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny pipelines of every family, usable as --model-id: sd, sdxl, sd3, zeroscope, wan."""
    root = tmp_path_factory.mktemp("families")
    return {"sd": save_tiny_stable_diffusion(root / "sd"), "sdxl": save_tiny_sdxl(root / "sdxl"),
            "sd3": save_tiny_sd3(root / "sd3"), "zeroscope": save_tiny_zeroscope(root / "zeroscope"),
            "wan": save_tiny_wan(root / "wan")}


# ----- a trained Pendulum run with policy snapshots: a ladder of behaviours from random to trained -----
LADDER_GROUP = "pendulum_ladder"  # the tests that use it share one xdist worker, so that it is trained once


@pytest.fixture(scope="session")
def pendulum_ladder(tmp_path_factory) -> tuple[Path, dict]:
    """runs/ladder: sac_env_reward.py on Pendulum-v1, 6000 steps (1000 random), its actor saved every 1000 steps
    (policies/step_1000.pt ... step_6000.pt); (run folder, summary). Trained in this process (about 40 s)."""
    import sac_env_reward as sac

    root = tmp_path_factory.mktemp("ladder")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = sac.Args(env_id="Pendulum-v1", total_timesteps=6_000, learning_starts=1000, batch_size=256,
                        eval_every=0, eval_episodes=5, progress=False, log_every=1000, buffer_size=100_000,
                        run_name="ladder", threads=1, save_policy_every=1000)
        args, run_dir = sac.prepare_run(args, sac.Args)
        summary = sac.train(args, run_dir, sac.build_reward)
    finally:
        os.chdir(cwd)
    return root / "runs" / "ladder", summary


# ----- tiny contrastive models of the other kinds sac_clip.py reads (SigLIP, X-CLIP) -----
@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    """Folder of a tiny SigLIP checkpoint with random weights (2-layer towers, 32x32 images, 32-dim embeddings), the
    character-level tokenizer (64 positions, SigLIP's text length) and a SiglipImageProcessorPil resizing to 32x32
    (bicubic, no crop, mean and std 0.5: SigLIP's)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    folder = tmp_path_factory.mktemp("models") / "tiny-siglip"
    tokenizer = write_tiny_clip_tokenizer(folder.parent / "tiny-siglip_tokenizer_files")
    tokenizer.model_max_length = 64
    config = SiglipConfig(**tiny_towers(tokenizer.get_vocab(), 64))
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_xclip(tmp_path_factory) -> Path:
    """Folder of a tiny X-CLIP checkpoint with random weights: 2-layer towers, 32x32 frames, windows of 4 frames
    (num_frames), a 1-layer MIT (its width the projection's, 16) and prompts generator; the character-level
    tokenizer with end-of-text as its last id (X-CLIP's text tower pools at a prompt's largest id, CLIP's
    end-of-text in its own vocabulary) and a VideoMAEImageProcessorPil (X-CLIP's: shortest side to 36, bilinear, center crop 32, CLIP's mean
    and std)."""
    from transformers import VideoMAEImageProcessorPil, XCLIPConfig, XCLIPModel

    from train_pendulum_models import write_char_tokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-xclip"
    tokenizer = write_char_tokenizer(folder.parent / "tiny-xclip_tokenizer_files", max_length=77, eos_last=True)
    towers = tiny_towers(tokenizer.get_vocab(), 77)
    towers["vision_config"].update(num_frames=4, mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=1,
                                   mit_num_attention_heads=2)
    config = XCLIPConfig(**towers, projection_dim=16, prompt_layers=1, prompt_attention_heads=2,
                         prompt_num_attention_heads=2)
    torch.manual_seed(0)
    XCLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    VideoMAEImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(folder)
    return folder
