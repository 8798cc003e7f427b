"""The Meta-World checks (tests/test_metaworld.py) in their own virtual environment: Meta-World's mujoco 3.3.0 cannot
stand beside dm_control 1.0.50, so the main suite runs them with .venv-metaworld's python (CI makes it; README,
Set up) or $METAWORLD_PYTHON, and skips, naming how to make it, where there is none."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.heavy
def test_metaworld_checks_pass_in_their_own_environment():
    if importlib.util.find_spec("metaworld") is not None:
        pytest.skip("metaworld is installed here: tests/test_metaworld.py runs in this environment")
    python = Path(os.environ.get("METAWORLD_PYTHON") or ROOT / ".venv-metaworld" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"no Meta-World environment at {python}: python -m venv .venv-metaworld && "
                    ".venv-metaworld/bin/pip install -r requirements-metaworld.txt")
    proc = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_metaworld.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and "skipped" not in summary, proc.stdout[-4000:] + proc.stderr[-2000:]
