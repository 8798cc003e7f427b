"""Soft Actor-Critic rewarded by CLIP: how well each rendered frame matches a text prompt (VLM-RM).

    python sac_clip.py --env-id Walker2d-v4 --prompt "a person walking"
    python sac_clip.py --env-id Humanoid-v4 --prompt "a humanoid robot kneeling" \
        --baseline-prompt "a humanoid robot" --clip-alpha 0.5
    python sac_clip.py --env-id Walker2d-v4 --prompt "a person walking" --prompt "a person waving" \
        --prompt-weight 1 --prompt-weight 0.5                               # a weighted composition of goals
    python sac_clip.py --env-id Walker2d-v4 --prompt-schedule "0:a person standing;500:a person walking"
    python sac_clip.py --resume runs/Walker2d-v4__sac_clip__1__1790000000

The reward is VLM-RM's (Rocamonde et al., "Vision-Language Models are Zero-Shot Reward Models for Reinforcement
Learning", ICLR 2024). For a rendered frame s:
    x = CLIP_image(s) / |CLIP_image(s)|                         the normalised image embedding
    e_i = CLIP_text(goal_i) / |CLIP_text(goal_i)|               the normalised goal-prompt embeddings
    g = sum_i w_i e_i / sum_i |w_i|                             their weighted mean (w_i: --prompt-weight, default 1)
    b = mean_j CLIP_text(base_j) / |CLIP_text(base_j)|          mean of the normalised baseline-prompt embeddings
    d = g - b,   P = alpha d d^T / |d|^2 + (1 - alpha) I
    reward(s) = 1 - |(x - g) P|^2 / 2
The means are not re-normalised (as in the paper's code), so with alpha = 0 the reward is x.g + (1 - |g|^2) / 2:
the cosine similarity x.g for a single goal prompt, and x.g plus a constant for several. alpha = 1 keeps only the
component of x - g along the goal-baseline direction d. A negative weight pushes g away from that prompt ("not
this"). With --prompt-schedule "0:TEXT_0;START_1:TEXT_1;..." the goal changes within each episode: the frame of
the episode's 0-based step s is scored on g_k = e_k (and P_k from d_k = e_k - b) of the last entry with START_k <= s.

The agent never sees the environment's reward: it is logged as charts/episodic_return next to the learned
charts/clip_return. The file reads top to bottom like sac_env_reward.py (the reward's formula and model, the SAC
networks, update and training loop; then what serves them), whose SAC core it carries byte for byte
between the "SAC CORE" marker comments (tests check it); only Args and the reward section differ.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import importlib.util
import json
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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    """SAC rewarded by CLIP similarity between the rendered frame and a text prompt (VLM-RM)."""

    scene: Literal["stock", "natural"] = "natural"
    """what frames show (docs/method.md#scenes): natural (the text rewards' default: grass, a blue sky with clouds, no
    reflections, a camera following the body close enough to fill the frame) or stock (the env's own)"""

    clip_model_id: str = "openai/clip-vit-large-patch14"
    """a transformers image-text or video-text contrastive checkpoint (hub id, or a folder saved with
    save_pretrained), its kind read from its config.json: CLIP, SigLIP / SigLIP 2 (e.g.
    google/siglip-so400m-patch14-384, google/siglip2-base-patch16-224) or X-CLIP (e.g. microsoft/xclip-base-patch32,
    a video model: sliding windows of frames)"""
    prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """goal prompt, e.g. "a person walking" (or use --prompt-schedule); several: g = sum_i w_i e_i / sum_i |w_i|"""
    prompt_weight: Annotated[tuple[float, ...], tyro.conf.UseAppendAction] = ()
    """weight w_i per --prompt, in order (default 1 each: g is the mean of the e_i); negative: 'not this'"""
    prompt_schedule: Optional[str] = None
    """goal prompts in sequence (not with --prompt): "0:a person standing;200:a person jumping"; START: 0-based step"""
    baseline_prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """baseline prompt: the scene without the goal, e.g. "a humanoid robot" (averaged; default "a simulated robot")"""
    clip_alpha: float = 0.0
    """VLM-RM's alpha in [0, 1]: 0 the plain CLIP reward, 1 only the projection onto goal - baseline"""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """precision of the CLIP model (auto: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on the CPU); embeddings and
    reward are in fp32"""
    reward_batch_size: int = 64
    """frames (from all envs and consecutive steps) per CLIP forward pass; transitions wait for a full batch (a video
    model: frames of windows per pass; transitions wait for the end of their episode)"""
    # A video model (X-CLIP): windows of the model's num_frames frames; the next three default to the checkpoint
    # folder's vlm_rm_config.json if it has them, else to these values
    stride: Optional[int] = None
    """video model: window frames between window starts (default half a window); a frame's reward is the mean over
    the windows that contain it"""
    video_fps: Optional[float] = None
    """video model: the frame rate of its windows (default 8), made the frame stride from the env's step time dt:
    round(1 / (dt * video_fps)), at least 1"""
    frame_stride: Optional[int] = None
    """video model: a window takes every k-th frame (every frame still gets its reward: one set of windows per
    residue mod k); default from --video-fps and the env's dt"""


# ---------------------------------------------------------------------------------------------------------------
# The reward: CLIP similarity between each rendered frame and the goal prompt, regularised by a baseline prompt
# (VLM-RM, docs/method.md#clip-reward-vlm-rm): the formula (vlm_rm_reward, one function), then the model with its
# goals (CLIPReward). The labeler that feeds it the frames during training, the settings, the prompts and the loading
# follow the training loop.
# ---------------------------------------------------------------------------------------------------------------
def vlm_rm_reward(x: torch.Tensor, goal: torch.Tensor, baseline: torch.Tensor, alpha: float) -> torch.Tensor:
    """VLM-RM's reward of normalised image embeddings x (N, D), with the goal g and the baseline b (D,):

        reward = 1 - |(x - g) P|^2 / 2,   P = alpha d d^T / |d|^2 + (1 - alpha) I,   d = g - b

    alpha 1 keeps only the component of x - g along d, alpha 0 all of it (the plain CLIP reward)."""
    d = goal - baseline
    eye = torch.eye(len(d), device=d.device)
    direction = torch.outer(d, d) / d.dot(d) if alpha > 0 else torch.zeros_like(eye)
    projection = alpha * direction + (1.0 - alpha) * eye
    return 1.0 - 0.5 * ((x - goal) @ projection).pow(2).sum(-1)


class CLIPReward(nn.Module):
    """VLM-RM's CLIP reward: forward(frames) maps uint8 frames (N, H, W, 3) to float32 rewards (N,),
    vlm_rm_reward of their normalised embeddings (see the module docstring).

    The model is one of three kinds (KINDS, read from the checkpoint's config.json by load_model): CLIP, SigLIP
    (SigLIP 2's fixed-resolution checkpoints are SigLIP models; its text padded to its full length, as it was
    trained) or X-CLIP, a video-text model. X-CLIP scores windows of context_size consecutive frames (the model's
    num_frames), one every stride frames of each residue mod frame_stride (windows(), the video SDS reward's rule);
    a frame's reward is the mean over the windows that contain it (episode()). X-CLIP's text embedding is its own
    video-specific one (the model's prompts generator conditions each prompt on the window's frames, as its
    video-text similarity does), so a window's goal g and baseline b are composed from the window's own prompt
    embeddings; the formula is the same.

    Goal prompts e_1..e_K (normalised embeddings) with weights w_i make one goal g = sum_i w_i e_i / sum_i |w_i|
    (the plain mean when all weights are 1, bit for bit as before weights existed). With schedule=True each prompt
    is a goal of its own instead (g_k = e_k, with its own projection from d_k = e_k - b), and forward(frames,
    prompt) scores each frame on the goal of its index (a --prompt-schedule entry).

    Frames are preprocessed as the checkpoint's own image processor does (resize the shortest side with its
    resampling filter, rounding to uint8 as PIL does; center crop; rescale; normalise with its mean and std), but
    as one batched tensor computation on the model's device instead of image by image through PIL. The pixel
    values equal the processor's but for under 1% of them (0.02% on rendered frames), off by one or two uint8
    levels: PIL computes its filter weights in fixed point (measured in tests/test_sac_clip.py)."""

    def __init__(self, model, tokenizer, image_processor, prompts, baseline_prompts=None, alpha: float = 0.0,
                 weights: Optional[Sequence[float]] = None, schedule: bool = False):
        super().__init__()
        prompts, baseline_prompts, weights = check_reward_settings(prompts, baseline_prompts, alpha, weights)
        self.model = model.eval().requires_grad_(False)
        self.kind = model_kind(model.config.model_type)
        self.prompts, self.baseline_prompts, self.alpha = prompts, baseline_prompts, float(alpha)
        self.weights, self.schedule = weights, schedule
        self.read_image_processor(image_processor)
        self.video = self.kind == "xclip"
        # video: windows of the model's num_frames frames (its temporal modules take exactly that many)
        self.context_size = model.config.vision_config.num_frames if self.video else 1
        self.stride, self.frame_stride = max(1, self.context_size // 2), 1
        if self.video:  # the prompts' tokens, for the model's own video-conditioned text embeddings
            self.text_tokens = self.tokenize(tokenizer, prompts + baseline_prompts)

        embeddings = self.embed_text(tokenizer, prompts)  # (K, D) unit vectors e_i
        baseline = self.embed_text(tokenizer, baseline_prompts).mean(0)
        goals = self.compose(embeddings)
        texts = [[p] for p in prompts] if schedule else [prompts]
        for g, t in zip(goals, texts):
            if alpha > 0 and (g - baseline).norm() < 1e-6:
                raise UserError(f"goal prompts {t} and baseline prompts {baseline_prompts} have the same CLIP "
                                "embedding, so goal - baseline has no direction: change one, or use --clip-alpha 0")
        self.register_buffer("prompt_embeddings", embeddings)
        self.register_buffer("goals", goals)  # (1, D), or (K, D) for a schedule
        self.register_buffer("baseline", baseline)

    def compose(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The goals (..., G, D) from the goal prompts' normalised embeddings (..., K, D): each entry's own for a
        schedule, else their mean (all weights 1) or sum_i w_i e_i / sum_i |w_i|: means of unit vectors, not
        re-normalised."""
        if self.schedule:  # one goal per entry
            return embeddings
        if all(w == 1.0 for w in self.weights):
            return embeddings.mean(-2, keepdim=True)
        w = torch.tensor(self.weights, device=embeddings.device)
        return ((w[:, None] * embeddings).sum(-2) / w.abs().sum()).unsqueeze(-2)

    def reward_from_embeddings(self, x: torch.Tensor, prompt: Optional[torch.Tensor] = None,
                               goals: Optional[torch.Tensor] = None,
                               baseline: Optional[torch.Tensor] = None) -> torch.Tensor:
        """vlm_rm_reward of normalised image embeddings x (N, D); prompt: None (the goal), or per frame the index of
        its goal (a schedule's entry g_k). goals (N, G, D) and baseline (N, D): each row's own (X-CLIP's
        video-conditioned text), instead of the model's fixed ones."""
        if goals is not None:
            k = torch.zeros(len(x), dtype=torch.long) if prompt is None else torch.as_tensor(prompt).expand(len(x))
            return torch.cat([vlm_rm_reward(x[i: i + 1], goals[i, int(k[i])], baseline[i], self.alpha)
                              for i in range(len(x))]) if len(x) else x.new_zeros(0)
        if prompt is None:
            return vlm_rm_reward(x, self.goal, self.baseline, self.alpha)
        prompt = torch.as_tensor(prompt, device=x.device).expand(len(x))
        reward = torch.empty(len(x), device=x.device)
        for k in prompt.unique().tolist():  # the frames of each goal together
            m = prompt == k
            reward[m] = vlm_rm_reward(x[m], self.goals[k], self.baseline, self.alpha)
        return reward

    @torch.inference_mode()
    def forward(self, frames, prompt=None) -> torch.Tensor:
        """uint8 frames (N, H, W, 3), numpy or torch -> rewards (N,), float32, on the model's device. prompt: None,
        or an int or N goal indices (a schedule's entries). A video model: the N frames are one episode's, in
        windows (episode())."""
        if self.video:
            return self.episode(frames, prompt)[0]
        return self.reward_from_embeddings(self.embed_frames(frames), prompt)

    @torch.inference_mode()
    def episode(self, frames, prompt=None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """One episode's uint8 frames (N, H, W, 3) -> per-frame rewards (N,) and per-frame cosines with each goal
        prompt (N, K), float32, at most batch_size frames per forward pass. An image model scores each frame; a
        video model each window (windows over every frame_stride-th frame, from each residue), a frame getting the
        mean over the windows that contain it, a window scored on its last frame's prompt index (a schedule's
        entry). A residue with fewer frames than a window is one window with its last frame repeated (an episode
        that ended early); its reward goes to its real frames."""
        frames = torch.as_tensor(frames)
        n = len(frames)
        if prompt is not None:
            prompt = torch.as_tensor(prompt).expand(n).cpu()
        if not self.video:
            out = [self.embed_frames(frames[i: i + batch_size]) for i in range(0, n, batch_size)]
            x = torch.cat(out) if out else torch.zeros(0, len(self.baseline), device=self.baseline.device)
            return (self.reward_from_embeddings(x, None if prompt is None else prompt.to(x.device)),
                    self.cosines(x))
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB frames shaped (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        pixels = torch.cat([self.preprocess(frames[i: i + batch_size]) for i in range(0, n, batch_size)])
        size = self.context_size
        spans = []  # (frame indices of the window, padded to size; how many are real)
        for residue in range(min(self.frame_stride, n)):
            idx = torch.arange(residue, n, self.frame_stride)
            for a, b in windows(len(idx), size, self.stride):
                w = idx[a:b]
                spans.append((torch.cat([w, w[-1:].expand(size - len(w))]), len(w)))
        k = len(self.prompts)
        sums, cos_sums = torch.zeros(n, device=pixels.device), torch.zeros(n, k, device=pixels.device)
        count = torch.zeros(n, device=pixels.device)
        per_pass = max(1, batch_size // size)
        for i in range(0, len(spans), per_pass):
            chunk = spans[i: i + per_pass]
            x, e = self.embed_videos(torch.stack([pixels[w] for w, _ in chunk]))
            entry = None if prompt is None else torch.stack([prompt[w[m - 1]] for w, m in chunk])
            goals, baseline = self.compose(e[:, :k]), e[:, k:].mean(1)
            r = self.reward_from_embeddings(x, entry, goals, baseline)
            cos = (x[:, None] * e[:, :k]).sum(-1)
            for j, (w, m) in enumerate(chunk):
                sums[w[:m]] += r[j]
                cos_sums[w[:m]] += cos[j]
                count[w[:m]] += 1
        return sums / count, cos_sums / count[:, None]

    def embed_videos(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """X-CLIP: pixel values of windows (B, F, 3, H, W) -> their normalised video embeddings x (B, D) and each
        prompt's (goal prompts, then baseline prompts) normalised text embedding conditioned on the window (B, P, D),
        float32: the model's own forward, whose similarity logits are exactly logit_scale x . e."""
        out = self.model(**self.text_tokens, pixel_values=pixel_values.to(self.model.dtype))
        return out.video_embeds.float(), out.text_embeds.float()

    @torch.inference_mode()
    def embed_frames(self, frames) -> torch.Tensor:
        """uint8 frames (N, H, W, 3), numpy or torch -> normalised image embeddings x (N, D) on the model's device."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB frames shaped (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        return self.embed_images(self.preprocess(frames))

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        """The plain cosine similarity x . e_i of each normalised image embedding with each goal prompt (N, K)."""
        return x @ self.prompt_embeddings.T

    @property
    def goal(self) -> torch.Tensor:
        """The goal g (D,) (a schedule's first entry's)."""
        return self.goals[0]

    # ----- the embeddings, and the image processor's preprocessing as batched tensor operations -----
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings x (N, D), float32."""
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.model.dtype))
        e = getattr(out, "pooler_output", out).float()
        return e / e.norm(dim=-1, keepdim=True)

    def tokenize(self, tokenizer, prompts: list[str]) -> dict:
        """The prompts' tokens on the model's device, truncated to the text tower's length (a warning says so), padded
        as the kind was trained: SigLIP to its full length (its text tower pools the last position), CLIP and X-CLIP
        to the longest prompt (they pool the end-of-text token)."""
        max_len = min(tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        too_long = [p for p, ids in zip(prompts, tokenizer(prompts)["input_ids"]) if len(ids) > max_len]
        if too_long:
            print(f"warning: prompts longer than the text model's {max_len} tokens are truncated: {too_long}",
                  file=sys.stderr)
        padding = "max_length" if self.kind == "siglip" else True
        tokens = tokenizer(prompts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
        if self.kind == "siglip":  # SigLIP's text tower takes no attention mask (the padding is part of its input)
            tokens.pop("attention_mask", None)
        return dict(tokens.to(self.model.device))

    def embed_text(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings (P, D), float32 (X-CLIP: before its video conditioning)."""
        with torch.no_grad():
            out = self.model.get_text_features(**self.tokenize(tokenizer, prompts))
        e = getattr(out, "pooler_output", out).float()  # transformers 5 returns an output object, 4 a tensor
        return e / e.norm(dim=-1, keepdim=True)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3), on any device -> float32 pixel values (N, 3, crop, crop) on the model's."""
        x = frames.to(self.pixel_scale.device).permute(0, 3, 1, 2)  # uint8, channels-last in memory
        if self.do_resize:
            x = self.resize(x, self.output_size(*x.shape[-2:]))
        if self.do_center_crop:
            ch, cw = self.crop_to["height"], self.crop_to["width"]
            h, w = x.shape[-2:]
            if h < ch or w < cw:  # too small: zero padding first, as the processor does
                ph, pw = max(ch - h, 0), max(cw - w, 0)
                x = F.pad(x, ((pw + 1) // 2, pw // 2, (ph + 1) // 2, ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top: top + ch, left: left + cw]
        # (x * rescale_factor - mean) / std, as one multiply-add on a contiguous float copy
        return torch.addcmul(self.pixel_shift, x.contiguous().float(), self.pixel_scale)

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 images (N, 3, H, W) resized to size as PIL resizes them: separable antialiased filter, horizontal
        pass then vertical, each rounded to uint8. On the CPU torch has PIL's algorithm as a vectorised uint8
        kernel; elsewhere (CUDA has no uint8 kernel) the two passes run in float32 and are rounded here."""
        antialias = self.mode != "nearest-exact"
        if x.device.type == "cpu" and self.uint8_resize:
            return F.interpolate(x, size=size, mode=self.mode, antialias=antialias)
        h, w = size
        x = x.float()
        if x.shape[-1] != w:
            x = F.interpolate(x, size=(x.shape[-2], w), mode=self.mode, antialias=antialias).round().clamp(0, 255)
        if x.shape[-2] != h:
            x = F.interpolate(x, size=(h, w), mode=self.mode, antialias=antialias).round().clamp(0, 255)
        return x

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Resized (height, width), as transformers' get_resize_output_image_size computes it."""
        if self.resize_to.get("height") and self.resize_to.get("width"):
            return self.resize_to["height"], self.resize_to["width"]
        size = self.resize_to["shortest_edge"]
        short, long = min(height, width), max(height, width)
        new_long = int(size * long / short)
        return (size, new_long) if height <= width else (new_long, size)

    def read_image_processor(self, p) -> None:
        """Keeps the image processor's settings (its rescaling and normalisation as buffers) for the batched version."""
        self.do_resize, self.do_center_crop = p.do_resize, bool(getattr(p, "do_center_crop", False))  # SigLIP: none
        self.resize_to = dict(p.size)  # e.g. {shortest_edge: 224}, or SigLIP's {height: 384, width: 384}
        self.crop_to = dict(p.crop_size) if self.do_center_crop else {}
        resample = int(getattr(p.resample, "value", p.resample))
        if resample not in INTERPOLATION:
            raise UserError(f"image processor resample={p.resample}: only nearest, bilinear and bicubic are supported")
        self.mode = INTERPOLATION[resample]
        self.uint8_resize = True  # on the CPU: torch's uint8 resampling kernel (False: the float path used on CUDA)
        rescale = p.rescale_factor if p.do_rescale else 1.0
        mean, std = (p.image_mean, p.image_std) if p.do_normalize else ([0.0] * 3, [1.0] * 3)
        mean, std = (torch.tensor(v, device=self.model.device).broadcast_to(3).reshape(1, 3, 1, 1) for v in (mean, std))
        self.register_buffer("pixel_scale", rescale / std)  # pixel values = uint8 * scale + shift
        self.register_buffer("pixel_shift", -mean / std)

    # ----- loading -----
    @classmethod
    def from_pretrained(cls, model_id: str, prompts, baseline_prompts=None, alpha: float = 0.0, dtype="auto",
                        device="cpu", weights: Optional[Sequence[float]] = None,
                        schedule: bool = False) -> "CLIPReward":
        """Loads a CLIP, SigLIP or X-CLIP checkpoint (hub id or local folder; load_model): model, tokenizer and image
        processor."""
        check_reward_settings(prompts, baseline_prompts, alpha, weights)  # fail before loading gigabytes
        device = torch.device(device)
        model, tokenizer, image_processor = load_model(model_id, resolve_dtype(dtype, device), device)
        return cls(model, tokenizer, image_processor, prompts, baseline_prompts, alpha, weights, schedule)


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
# The reward, continued: what serves the formula and the training loop. The labeler that feeds it the frames
# during training, and the settings, the prompts and the loading, with their errors.
# ---------------------------------------------------------------------------------------------------------------
class CLIPLabeler:
    """The reward source of the training loop: labels queued transitions with the CLIP reward of their frame
    (the frame rendered after the step, i.e. of next_obs), --reward-batch-size frames per forward pass, oldest
    steps first across all envs. Transitions wait in the queue until a batch is full (or a flush). With a
    --prompt-schedule (starts: the entries' first steps), each frame is scored on the goal of the entry in force at
    its step (schedule_entry); frames of different entries share the forward passes. A video model (X-CLIP): an
    env's transitions wait until their episode ends (or a flush, which cuts the episode's video there), then the
    episode is scored in windows (CLIPReward.episode), --reward-batch-size frames of windows per pass."""

    name = "clip"  # the loop logs charts/clip_return
    needs_frames = True  # the training envs render every step

    def __init__(self, model: CLIPReward, batch_size: int, starts: Optional[Sequence[int]] = None):
        self.model, self.batch_size = model, batch_size
        # frames rendered at the size CLIP sees unless --render-size is given: its crop (else its resize target)
        size = model.crop_to if model.do_center_crop else model.resize_to
        self.render_size = size.get("height") or size.get("shortest_edge")
        self.starts = list(starts) if starts is not None else None
        # a composition (several prompts, or weights): also each prompt's plain cosine, for the logs
        self.per_prompt = self.starts is None and (len(model.prompts) > 1 or model.weights != [1.0])
        self.texts_logged = False
        self.reset_stats()

    def reset_stats(self) -> None:
        """Sums over the frames labelled since the last log."""
        k = len(self.model.prompts)
        self.frames, self.seconds, self.reward_sum, self.reward_sq = 0, 0.0, 0.0, 0.0
        self.cosine_sum = np.zeros(k)  # per goal prompt (composition)
        self.schedule_sum, self.schedule_frames = np.zeros(k), np.zeros(k, dtype=np.int64)  # per entry (schedule)

    def label(self, queue: "TransitionQueue", flush: bool = False) -> Optional[dict]:
        if self.model.video:
            return self.label_episodes(queue, flush)
        pending = len(queue)
        n = pending if flush else pending - pending % self.batch_size
        if n == 0:
            return None
        # the n oldest transitions: ordered by their position in their env's queue (time), then by env
        order = sorted((pos, env) for env, q in enumerate(queue.items) for pos in range(len(q)))[:n]
        take = np.bincount([env for _, env in order], minlength=len(queue.items))
        items = [queue.items[env].popleft() for env in range(len(queue.items)) for _ in range(take[env])]
        entry = None
        if self.starts is not None:
            entry = np.array([schedule_entry(self.starts, it["episode_step"]) for it in items])
        rewards = [self.compute(np.stack([it["frame"] for it in items[i: i + self.batch_size]]),
                                None if entry is None else entry[i: i + self.batch_size])
                   for i in range(0, n, self.batch_size)]
        return self.batch(queue, items, rewards, entry)

    def batch(self, queue: "TransitionQueue", items: list, rewards: list, entry: Optional[np.ndarray]) -> dict:
        """The labelled transitions (frames dropped) with their rewards; the schedule's statistics counted."""
        batch = queue.collate([{k: v for k, v in it.items() if k != "frame"} for it in items])
        batch["reward"] = np.concatenate(rewards)
        if entry is not None:
            self.schedule_sum += np.bincount(entry, weights=batch["reward"], minlength=len(self.starts))
            self.schedule_frames += np.bincount(entry, minlength=len(self.starts))
        return batch

    def label_episodes(self, queue: "TransitionQueue", flush: bool) -> Optional[dict]:
        """Video model: the transitions of every finished episode (all of them when flushing), env by env in order,
        each episode's video scored whole."""
        items = []
        for q in queue.items:
            n = len(q) if flush else max((i + 1 for i, it in enumerate(q) if it["done"]), default=0)
            items += [q.popleft() for _ in range(n)]
        if not items:
            return None
        entry = None
        if self.starts is not None:
            entry = np.array([schedule_entry(self.starts, it["episode_step"]) for it in items])
        rewards, start = [], 0
        for i in range(1, len(items) + 1):  # one video per run of the same env's same episode
            if i == len(items) or (items[i]["env"], items[i]["episode"]) != (items[start]["env"], items[start]["episode"]):
                rewards.append(self.compute(np.stack([it["frame"] for it in items[start:i]]),
                                            None if entry is None else entry[start:i]))
                start = i
        return self.batch(queue, items, rewards, entry)

    def compute(self, frames: np.ndarray, entry: Optional[np.ndarray] = None) -> np.ndarray:
        """Rewards of frames, each on the goal of its schedule entry (entry None: the one goal); a video model: the
        frames are one episode's video."""
        t = time.perf_counter()
        with torch.inference_mode():
            if self.model.video:
                r, cosines = self.model.episode(frames, entry, self.batch_size)
                r = r.cpu().numpy()
            else:
                x = self.model.embed_frames(frames)
                prompt = None if entry is None else torch.as_tensor(entry, device=x.device)
                r = self.model.reward_from_embeddings(x, prompt).cpu().numpy()  # .cpu() waits: the timing is complete
                cosines = self.model.cosines(x) if self.per_prompt else None
            if self.per_prompt:
                self.cosine_sum += cosines.sum(0).double().cpu().numpy()
        self.seconds += time.perf_counter() - t
        self.frames += len(r)
        self.reward_sum, self.reward_sq = self.reward_sum + float(r.sum()), self.reward_sq + float((r ** 2).sum())
        return r

    def log(self, logger: "Logger", step: int) -> None:
        """Means per frame since the last log: clip/reward, clip/reward_std, clip/frames_per_s; for a composition
        clip/cosine_prompt{i}, the plain cosine x . e_i with goal prompt i; for a schedule clip/reward_schedule{k},
        the mean reward of the frames under entry k. The index -> text table is written once as TensorBoard text
        ("prompts")."""
        if not self.texts_logged and (self.per_prompt or self.starts is not None):
            writer = getattr(logger, "writer", None)
            if writer is not None:
                writer.add_text("prompts", prompt_table(self.model.prompts, self.model.weights, self.starts), step)
            self.texts_logged = True
        if self.frames:
            mean = self.reward_sum / self.frames
            logger.scalar("clip/frames_per_s", self.frames / self.seconds, step)
            logger.scalar("clip/reward", mean, step)
            logger.scalar("clip/reward_std", math.sqrt(max(self.reward_sq / self.frames - mean ** 2, 0.0)), step)
            if self.per_prompt:
                for i, total in enumerate(self.cosine_sum):
                    logger.scalar(f"clip/cosine_prompt{i}", total / self.frames, step)
        if self.starts is not None:
            for k, count in enumerate(self.schedule_frames):
                if count:
                    logger.scalar(f"clip/reward_schedule{k}", self.schedule_sum[k] / count, step)
        self.reset_stats()

    def probe(self) -> np.ndarray:
        """One forward pass on a batch of blank frames (stats untouched): the pass --reward-overlap proves itself on."""
        with torch.inference_mode():
            n = max(self.batch_size, self.model.context_size)  # (X-CLIP: at least one window)
            blank = np.zeros((n, self.render_size, self.render_size, 3), np.uint8)
            if self.model.video:
                return self.model.episode(blank, batch_size=self.batch_size)[0].cpu().numpy()
            return self.model.reward_from_embeddings(self.model.embed_frames(blank)).cpu().numpy()

    def state_dict(self) -> dict:
        """Nothing to save: the CLIP reward is deterministic."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ----- loading: the model's kind, the reward's settings, the prompts, the labeler for a run; their errors -----
DEFAULT_BASELINE_PROMPTS = ("a simulated robot",)
# config.json's model_type -> the transformers class of that kind (SigLIP 2's fixed-resolution checkpoints, e.g.
# google/siglip2-base-patch16-224, are SigLIP models)
KINDS = {"clip": "CLIPModel", "siglip": "SiglipModel", "xclip": "XCLIPModel"}
KINDS_NOTE = ("sac_clip.py takes CLIP, SigLIP / SigLIP 2 (fixed resolution, e.g. google/siglip2-base-patch16-224) "
              "and X-CLIP checkpoints")
VIDEO_DEFAULTS = {"video_fps": 8.0}  # the video model's frame rate unless its vlm_rm_config.json or a flag says


def model_kind(model_type: str, model_id: str = "the model") -> str:
    """The kind (a KINDS key) of a config's model_type; UserError for any other."""
    if model_type in KINDS:
        return model_type
    hint = {"siglip2": ": SigLIP 2's NaFlex (variable resolution) checkpoints are not supported; use a fixed-resolution "
                       "one, e.g. google/siglip2-base-patch16-224",
            }.get(model_type, "")
    raise UserError(f"--clip-model-id {model_id} is a '{model_type}' checkpoint, not a contrastive image-text or "
                    f"video-text model this script reads{hint}; {KINDS_NOTE} (diffusion models: sac_sds.py --model-id)")


def checkpoint_kind(model_id: str) -> str:
    """The kind of a checkpoint (hub id or folder), read from its config.json's model_type before any weights load
    (transformers would load an X-CLIP checkpoint into CLIPModel without its temporal modules)."""
    from transformers import AutoConfig

    if os.path.isfile(os.path.join(model_id, "model_index.json")):
        raise UserError(f"--clip-model-id {model_id} is a diffusers pipeline, not a contrastive model: use it with "
                        f"sac_sds.py --model-id; {KINDS_NOTE}")
    try:
        model_type = AutoConfig.from_pretrained(model_id).model_type
    except (OSError, ValueError, KeyError) as e:  # missing config.json, no network, an unknown model_type
        raise load_error("--clip-model-id", "contrastive checkpoint (CLIP, SigLIP, X-CLIP)", model_id, e) from None
    return model_kind(model_type, model_id)


def load_model(model_id: str, dtype: torch.dtype, device: torch.device):
    """A CLIP, SigLIP or X-CLIP checkpoint's model (its own class, told by checkpoint_kind), tokenizer and image
    processor, the model on device in eval mode; UserError (one line) if it is of another kind or incomplete."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    model_id = check_model_id(model_id, "--clip-model-id")
    kind = checkpoint_kind(model_id)
    try:
        model = getattr(transformers, KINDS[kind]).from_pretrained(model_id, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        image_processor = AutoImageProcessor.from_pretrained(model_id)
    except (OSError, ValueError, RuntimeError) as e:  # missing files, no network, mismatched sizes
        raise load_error("--clip-model-id", f"{KINDS[kind]} checkpoint", model_id, e) from None
    return model.to(device).eval(), tokenizer, image_processor


def vlm_rm_config_of(model_id: str) -> dict:
    """The checkpoint folder's vlm_rm_config.json (the video settings it was trained for: stride, video_fps), or {}."""
    path = Path(model_id) / "vlm_rm_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e}); fix or delete it") from None
    return {k: v for k, v in config.items() if k in ("stride", "video_fps")}


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


# the image processor's PIL resampling filter -> F.interpolate mode (antialias=True reproduces PIL's filters)
INTERPOLATION = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


def check_reward_settings(prompts, baseline_prompts, alpha: float,
                          weights: Optional[Sequence[float]] = None) -> tuple[list[str], list[str], list[float]]:
    """The goal and baseline prompts as lists, and one weight per goal prompt (default 1 each); raises UserError for
    empty prompts, alpha outside [0, 1], or weights that are not one finite float per prompt, or all 0."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(baseline_prompts, str):
        baseline_prompts = [baseline_prompts]
    prompts, baseline_prompts = list(prompts or []), list(baseline_prompts or DEFAULT_BASELINE_PROMPTS)
    if not all(p.strip() for p in baseline_prompts):
        raise UserError(f"empty prompt in --baseline-prompt {baseline_prompts}; give text")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--clip-alpha must be in [0, 1] (got {alpha})")
    weights = check_weights(prompts, weights)
    if not any(weights):
        raise UserError(f"--prompt-weight {weights}: all 0, so the goal sum_i w_i e_i / sum_i |w_i| is undefined; give "
                        "at least one prompt a non-zero weight")
    return prompts, baseline_prompts, weights


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


def build_reward(args: Args, device: torch.device) -> CLIPLabeler:
    """Called by train() before the environments are made; raises UserError for bad reward settings."""
    if args.reward_batch_size < 1:
        raise UserError(f"--reward-batch-size must be at least 1 (got {args.reward_batch_size})")
    prompts, weights, starts = resolve_prompts(args)
    model = CLIPReward.from_pretrained(args.clip_model_id, prompts, args.baseline_prompt, args.clip_alpha,
                                       args.dtype, device, weights=weights, schedule=starts is not None)
    if model.video:
        set_windows(model, args)
    labeler = CLIPLabeler(model, args.reward_batch_size, starts)
    if labeler.per_prompt or starts is not None:  # the per-prompt logs' indices (also saved in args.json)
        kind = "schedule (clip/reward_schedule{k})" if starts is not None else "composition (clip/cosine_prompt{i})"
        print(f"goal prompt {kind}:\n" + prompt_table(model.prompts, model.weights, starts))
    return labeler


def set_windows(model: CLIPReward, args: Args) -> None:
    """A video model's stride and frame stride from the flags, else the checkpoint folder's vlm_rm_config.json, else
    the defaults (half a window; --video-fps 8 made a frame stride from the env's dt); UserError for bad values or a
    window longer than the env's episodes."""
    config = {**VIDEO_DEFAULTS, **vlm_rm_config_of(args.clip_model_id)}
    stride = args.stride if args.stride is not None else config.get("stride", model.stride)
    fps = args.video_fps if args.video_fps is not None else config["video_fps"]
    size = model.context_size
    if not 1 <= stride <= size:
        raise UserError(f"--stride {stride}: give 1 to {size} (the model's window), or frames go unscored")
    if (args.frame_stride is not None and args.frame_stride < 1) or fps <= 0:
        raise UserError("--frame-stride must be at least 1 and --video-fps positive")
    dt, limit = env_timing(args)
    k = args.frame_stride if args.frame_stride is not None else (max(1, round(1.0 / (dt * fps))) if dt else 1)
    span = (size - 1) * k + 1  # env steps one window covers
    if span > limit:
        raise UserError(f"the video model's window ({size} frames, every {k} env step(s): {span} steps) is longer than "
                        f"{args.env_id}'s episodes ({limit} steps): lower --frame-stride (or raise --video-fps) or "
                        "--max-episode-steps")
    model.stride, model.frame_stride = stride, k
    print(f"video windows: {size} frames every {stride}, every {k} env step(s)"
          + (f" ({1 / (dt * k):.1f} frames/s of env time)" if dt else ""))


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
