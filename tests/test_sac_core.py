"""The SAC core is the same text in sac_env_reward.py, sac_clip.py and sac_sds.py, and the two text rewards share
their prompt and model-loading blocks (docs/method.md#the-scripts-and-the-shared-code); after editing a shared block
in its source, copy it with `python tools/sync_core.py`."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import sync_core  # noqa: E402


def test_sources_have_every_block_once_in_order():
    for source, _, pattern, expected in sync_core.SHARED:
        text = source.read_text()
        assert list(sync_core.blocks(source, pattern)) == expected, source.name
        marker = "SAC CORE" if pattern is sync_core.SAC_CORE else "TEXT REWARD"
        for name in expected:
            assert text.count(f"# === {marker} BEGIN: {name} (") == 1 and text.count(f"# === {marker} END: {name} ===") == 1


def test_copies_are_byte_identical():
    for source, copies, pattern, expected in sync_core.SHARED:
        for path in copies:
            assert set(sync_core.blocks(path, pattern)) == set(expected), path.name
    assert sync_core.differences() == [], "edit the source, then run: python tools/sync_core.py"


def test_block_extraction_sees_a_one_character_change(tmp_path):
    source = sync_core.SHARED[0][0]
    changed = tmp_path / "changed.py"
    changed.write_text(source.read_text().replace("gamma: float = 0.99", "gamma: float = 0.98"))
    before, after = (sync_core.blocks(p, sync_core.SAC_CORE) for p in (source, changed))
    assert after["args"] != before["args"] and after["update"] == before["update"]


def test_check_names_a_block_that_drifted(tmp_path, monkeypatch):
    """--check (the maintainer's command) reports a copy's changed block, and sync repairs it."""
    import shutil

    for name in ("sac_env_reward.py", "sac_clip.py", "sac_sds.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    copy = tmp_path / "sac_clip.py"
    copy.write_text(copy.read_text().replace("tau: float = 0.005", "tau: float = 0.01"))
    shared = [(tmp_path / s.name, [tmp_path / c.name for c in cs], p, e) for s, cs, p, e in sync_core.SHARED]
    monkeypatch.setattr(sync_core, "SHARED", shared)
    assert sync_core.differences() == ["sac_clip.py: block 'args'"]
    sync_core.sync()
    assert sync_core.differences() == []


def test_a_reader_meets_the_training_loop_before_line_800():
    """Each script reads top to bottom: its args, its reward, the networks, the buffer, the update, then the loop; the
    loading, the speed wrappers and the error paths follow it."""
    for name in ("sac_env_reward.py", "sac_clip.py", "sac_sds.py"):
        lines = (ROOT / name).read_text().splitlines()
        loop = [i for i, line in enumerate(lines, 1) if line.strip() == "while run.global_step < args.total_timesteps:"]
        assert len(loop) == 1 and loop[0] < 800, (name, loop)
