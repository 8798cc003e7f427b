"""The SAC core is the same text in sac_env_reward.py, sac_clip.py and sac_sds.py
(docs/method.md#the-scripts-and-the-shared-code).

Each shared block sits between `# === SAC CORE BEGIN: <name> ...` and `# === SAC CORE END: <name> ===`.
sac_env_reward.py is the source of truth; after editing a block there, copy it to the other scripts with

    python tests/test_sac_core.py --sync

The two text rewards also share their prompt handling (schedules, composition weights) and model loading (dtypes,
load errors) between `# === TEXT REWARD BEGIN/END: prompts|models ===` markers; sac_sds.py is their source of
truth and --sync copies them to sac_clip.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sac_env_reward.py"
COPIES = [ROOT / "sac_clip.py", ROOT / "sac_sds.py"]
BLOCK = re.compile(r"^# === SAC CORE BEGIN: (?P<name>[\w ]+?) \(.*?\n.*?^# === SAC CORE END: (?P=name) ===$",
                   re.M | re.S)
EXPECTED = ["args", "environments", "networks", "replay buffer", "update", "checkpoints", "evaluation and logging",
            "training loop"]
TEXT_SOURCE, TEXT_COPIES = ROOT / "sac_sds.py", [ROOT / "sac_clip.py"]
TEXT_BLOCK = re.compile(r"^# === TEXT REWARD BEGIN: (?P<name>[\w ]+?) \(.*?\n.*?^# === TEXT REWARD END: (?P=name) ===$",
                        re.M | re.S)
TEXT_EXPECTED = ["prompts", "models"]


def blocks(path: Path, pattern: re.Pattern = BLOCK) -> dict[str, str]:
    return {m["name"]: m[0] for m in pattern.finditer(path.read_text())}


def test_source_has_every_block_once():
    text = SOURCE.read_text()
    assert list(blocks(SOURCE)) == EXPECTED
    for name in EXPECTED:
        assert text.count(f"# === SAC CORE BEGIN: {name} (") == 1
        assert text.count(f"# === SAC CORE END: {name} ===") == 1


def test_copies_are_byte_identical():
    source = blocks(SOURCE)
    existing = [p for p in COPIES if p.exists()]
    for path in existing:
        copy = blocks(path)
        assert list(copy) == EXPECTED, f"{path.name}: blocks {list(copy)}"
        for name in EXPECTED:
            assert copy[name] == source[name], (
                f"SAC core block '{name}' of {path.name} differs from sac_env_reward.py; "
                "edit sac_env_reward.py and run: python tests/test_sac_core.py --sync"
            )


def test_text_prompt_blocks_are_byte_identical():
    source = blocks(TEXT_SOURCE, TEXT_BLOCK)
    assert list(source) == TEXT_EXPECTED
    for path in TEXT_COPIES:
        assert blocks(path, TEXT_BLOCK) == source, (
            f"the TEXT REWARD blocks of {path.name} differ from sac_sds.py's; edit sac_sds.py and run: "
            "python tests/test_sac_core.py --sync"
        )


def test_block_extraction_sees_a_one_character_change(tmp_path):
    text = SOURCE.read_text()
    changed = tmp_path / "changed.py"
    changed.write_text(text.replace("gamma: float = 0.99", "gamma: float = 0.98"))
    assert blocks(changed)["args"] != blocks(SOURCE)["args"]
    assert blocks(changed)["update"] == blocks(SOURCE)["update"]


def sync() -> None:
    for source_path, copies, pattern in ((SOURCE, COPIES, BLOCK), (TEXT_SOURCE, TEXT_COPIES, TEXT_BLOCK)):
        source = blocks(source_path, pattern)
        for path in copies:
            if not path.exists():
                continue
            text = path.read_text()
            for m in reversed(list(pattern.finditer(text))):
                text = text[: m.start()] + source[m["name"]] + text[m.end():]
            path.write_text(text)
            print(f"synced {path.name} from {source_path.name}")


if __name__ == "__main__" and "--sync" in sys.argv:
    sync()
