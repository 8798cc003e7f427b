"""The Pendulum world (demo/): the committed models load through the scripts' own from_pretrained code, rank frames
by the pole angle, and SAC trained on the diffusion reward for "a pendulum pointing up" keeps the pole upright more
often than a random policy."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "demo"))
UP, DOWN = "a pendulum pointing up", "a pendulum pointing down"
SDS_MODEL, CLIP_MODEL = ROOT / "demo" / "pendulum-sd", ROOT / "demo" / "pendulum-clip"
SD3_MODEL = ROOT / "demo" / "pendulum-sd3"


def test_committed_folders_are_complete_pipelines():
    """The folders are what save_pretrained writes for a StableDiffusionPipeline and a CLIP checkpoint."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    pipe = StableDiffusionPipeline.from_pretrained(SDS_MODEL, safety_checker=None)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(pipe, part) is not None
    # whole captions fit the text encoder: truncation would make "up" and "down" identical
    ids = pipe.tokenizer([UP, DOWN, "a pendulum pointing right"]).input_ids
    assert max(len(i) for i in ids) <= pipe.text_encoder.config.max_position_embeddings
    assert max(len(i) for i in ids) <= pipe.tokenizer.model_max_length
    assert CLIPModel.from_pretrained(CLIP_MODEL).config.vision_config.image_size == 32


def test_committed_sd3_folder_is_a_complete_sd3_pipeline():
    """demo/pendulum-sd3 is a StableDiffusion3Pipeline (no T5) with pendulum-sd's VAE design and captions that fit."""
    import sac_sds
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(SD3_MODEL, text_encoder_3=None, tokenizer_3=None)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert getattr(pipe, part) is not None
    assert pipe.vae.config.shift_factor is not None and pipe.vae.config.latent_channels == 4
    ids = pipe.tokenizer([UP, DOWN, "a pendulum pointing right"]).input_ids
    assert max(len(i) for i in ids) <= pipe.tokenizer.model_max_length
    model = sac_sds.SDSReward.from_pretrained(str(SD3_MODEL), UP)
    assert type(model.family).__name__ == "SD3Family" and model.resolution == 32


def test_training_script_is_deterministic_and_writes_loadable_folders(tmp_path):
    """demo/train_pendulum_models.py, shortened, twice with one seed: byte-identical weights, and folders that the
    reward classes load (with the diffusion model's tadpole_config.json)."""
    import sac_clip
    import sac_sds

    short = ["--frames", "48", "--vae-steps", "2", "--unet-steps", "2", "--clip-steps", "2", "--batch-size", "8"]
    for out in ("a", "b"):
        run_script("demo/train_pendulum_models.py", "--out-dir", str(tmp_path / out), *short, cwd=tmp_path)
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert len(weights) == 8  # sd: unet, vae, text_encoder; sd3: transformer, vae, two text encoders; clip
    for w in weights:
        assert (tmp_path / "a" / w).read_bytes() == (tmp_path / "b" / w).read_bytes(), w
    model = sac_sds.SDSReward.from_pretrained(str(tmp_path / "a" / "pendulum-sd"), UP)
    assert (model.align_scale, model.resolution, model.latent_shape) == (0.0, 32, (4, 8, 8))
    assert sac_sds.tadpole_defaults(str(tmp_path / "a" / "pendulum-sd"))[0]["noise_level_base"] == 700
    sd3 = sac_sds.SDSReward.from_pretrained(str(tmp_path / "a" / "pendulum-sd3"), UP)
    assert sd3.family.flow and sd3.latent_shape == (4, 8, 8)
    vae_weights = [(tmp_path / "a" / m / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
                   for m in ("pendulum-sd", "pendulum-sd3")]
    assert vae_weights[0] == vae_weights[1]  # one VAE for both families: the ablation changes the denoiser only
    vae_sd, vae_sd3 = (json.loads((tmp_path / "a" / m / "vae" / "config.json").read_text()) for m in
                       ("pendulum-sd", "pendulum-sd3"))
    assert vae_sd3["shift_factor"] is not None and vae_sd["block_out_channels"] == vae_sd3["block_out_channels"]
    clip = sac_clip.CLIPReward.from_pretrained(str(tmp_path / "a" / "pendulum-clip"), [UP])
    assert clip(np.zeros((2, 500, 500, 3), dtype=np.uint8)).shape == (2,)


def test_rewards_rank_held_out_frames_by_uprightness():
    """On frames the models never saw, the reward for "pointing up" rises with cos(angle); the SDS rewards (SD and
    SD3 families) are noisy per draw, so their mean over draws is ranked."""
    import pendulum_world
    import sac_clip
    import sac_sds

    torch.manual_seed(0)
    angles, frames = pendulum_world.held_out_frames(120, seed=777)
    upright = np.cos(angles)
    clip = sac_clip.CLIPReward.from_pretrained(str(CLIP_MODEL), [UP])
    assert pendulum_world.spearman(clip(frames).numpy(), upright) > 0.5
    for folder in (SDS_MODEL, SD3_MODEL):  # both families, each with its own tadpole_config.json
        model = sac_sds.SDSReward.from_pretrained(str(folder), UP)
        low, n = (sac_sds.tadpole_defaults(str(folder))[0][k] for k in ("noise_level_base", "noise_level_range"))
        latents = model.encode(frames)
        g = torch.Generator().manual_seed(0)
        rewards = [model(latents, torch.randint(low, low + n, (len(latents),), generator=g), generator=g).numpy()
                   for _ in range(4)]
        assert pendulum_world.spearman(np.mean(rewards, 0), upright) > 0.5, folder


@pytest.mark.timeout(1500)
@pytest.mark.heavy
def test_sds_agent_keeps_the_pole_up_more_than_random(tmp_path):
    """The whole loop on a CPU: render, TADPoLe reward from the committed diffusion model, SAC. After a short
    budget the deterministic policy spends more evaluation steps upright (within 30 degrees) than random actions
    (the margin over seeds: docs/pendulum-world.md, where it lists the CI checks)."""
    import pendulum_world
    import sac_env_reward as core

    run_script("sac_sds.py", "--env-id", "Pendulum-v1", "--model-id", str(SDS_MODEL), "--prompt", UP,
               "--total-timesteps", "5000", "--learning-starts", "1000", "--eval-every", "0", "--eval-episodes", "1",
               "--checkpoint-every", "0", "--threads", "1", "--no-progress", "--run-name", "up", cwd=tmp_path,
               timeout=1400)
    run = tmp_path / "runs" / "up"
    assert json.loads((run / "args.json").read_text())["model_id"] == str(SDS_MODEL)
    actor, run_args = core.load_actor(run)
    trained = pendulum_world.rollout(actor.act, run_args, episodes=5)
    random = pendulum_world.rollout(None, run_args, episodes=5)
    assert trained["upright"] > random["upright"] + 0.1, (trained, random)
    assert trained["angle"] < random["angle"], (trained, random)


def test_the_two_by_two_table_reads_eval_reward_output(tmp_path):
    """--what two-by-two on an eval_reward.py output folder written here by hand: a cell's AUCs and intervals as
    eval_reward.py gave them ("counterclockwise" flipped: its clockwise > counterclockwise AUC read from the other
    side), and its caption use recomputed from the spinning clips' per-clip means; a cell without rows is left out."""
    import csv

    import pendulum_world

    cell = pendulum_world.TWO_BY_TWO[("contrastive", "a window")]
    cw, ccw, rest = pendulum_world.CW, pendulum_world.CCW, pendulum_world.REST
    pairs = ["clips:spinning > clips:frozen", "clips:spinning > clips:resting", "clips:clockwise > clips:counterclockwise"]
    rows = [{"reward": cell, "prompt": p, "auc": dict(zip(pairs, a)), "auc_ci": dict(zip(pairs, ci))}
            for p, a, ci in ((cw, (0.9, 1.0, 0.6), ([0.8, 0.95], [1, 1], [0.5, 0.7])),
                             (ccw, (0.9, 1.0, 0.3), ([0.8, 0.95], [1, 1], [0.2, 0.45])),
                             (rest, (0.1, 0.0, 0.5), ([0, 0.2], [0, 0], [0.4, 0.6])))]
    (tmp_path / "summary.json").write_text(json.dumps({"rows": rows}))
    means = np.random.default_rng(0).normal(size=(3, 3))  # (clip, prompt cw / ccw / rest)
    with open(tmp_path / "episodes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["behaviour", "clip", *(f"{cell} | {p} | mean" for p in (cw, ccw, rest))])
        w.writeheader()
        for i, m in enumerate(means):
            w.writerow({"behaviour": "clips:spinning", "clip": f"clip{i:03d}",
                        **{f"{cell} | {p} | mean": v for p, v in zip((cw, ccw, rest), m)}})
        w.writerow({"behaviour": "clips:frozen", "clip": "clip000", **{f"{cell} | {p} | mean": 99 for p in (cw, ccw, rest)}})
    result = pendulum_world.two_by_two(pendulum_world.Args(what="two-by-two", eval_dir=(str(tmp_path),)))
    assert result["clips"] == 3 and len(result["cells"]) == 1
    got = result["cells"][0]
    assert (got["objective"], got["time"]) == ("contrastive", "a window")
    assert got["spin_frozen"] == (0.9, 0.8, 0.95) and got["cw_ccw"] == (0.6, 0.5, 0.7)
    assert got["ccw_cw"] == pytest.approx((0.7, 0.55, 0.8))  # 1 - AUC, the interval turned round
    assert got["direction_gap"] == pytest.approx(np.abs(means[:, 0] - means[:, 1]).mean())
    assert got["rest_gap"] == pytest.approx(np.abs(means[:, 0] - means[:, 2]).mean())
    assert got["spread"] == pytest.approx(means[:, 0].std())
    assert result["table"].count("\n") == 2  # the header, its rule, one row
