"""Shared fixtures. Tests run the scripts for real: as subprocesses (the command line users type) or in-process
through train() (faster; same code). Tiny models are built from configs and saved with save_pretrained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_script(script: str, *args: str, cwd: Path, timeout: float = 600, check: bool = True,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `python ROOT/script args...` in cwd; output captured as text. check: fail the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All TensorBoard scalars of a run folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh working directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
