"""Copies the shared code of the three training scripts from its source into the copies.

    python tools/sync_core.py           # copy, after editing a shared block in its source
    python tools/sync_core.py --check   # exit 1, naming the blocks, if a copy differs (tests/test_sac_core.py)

The SAC core is the same text in sac_env_reward.py, sac_clip.py and sac_sds.py
(docs/method.md#the-scripts-and-the-shared-code): each shared block sits between `# === SAC CORE BEGIN: <name> (...)
===` and `# === SAC CORE END: <name> ===`, and sac_env_reward.py is its source. The two text rewards also share their prompt handling (schedules,
composition weights), model loading (dtypes, load errors) and a video model's windows (with the env's step time)
between `# === TEXT REWARD BEGIN/END: prompts|models|video ===` markers; sac_sds.py is their source and sac_clip.py
the copy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAC_CORE = re.compile(r"^# === SAC CORE BEGIN: (?P<name>[\w ]+?) \(.*?\n.*?^# === SAC CORE END: (?P=name) ===$",
                      re.M | re.S)
TEXT_REWARD = re.compile(r"^# === TEXT REWARD BEGIN: (?P<name>[\w ]+?) \(.*?\n.*?^# === TEXT REWARD END: (?P=name) ===$",
                         re.M | re.S)
# (source, copies, block pattern, the blocks in the source's order)
SHARED = [(ROOT / "sac_env_reward.py", [ROOT / "sac_clip.py", ROOT / "sac_sds.py"], SAC_CORE,
           ["args", "networks", "replay buffer", "update", "training loop", "speed", "environments", "checkpoints",
            "evaluation and logging", "run folder", "scenes"]),
          (ROOT / "sac_sds.py", [ROOT / "sac_clip.py"], TEXT_REWARD, ["prompts", "models", "video"])]


def blocks(path: Path, pattern: re.Pattern) -> dict[str, str]:
    """The marked blocks of a file, by name, in file order."""
    return {m["name"]: m[0] for m in pattern.finditer(path.read_text())}


def differences() -> list[str]:
    """Each copy's block that differs from its source's (or is missing), as 'FILE: block NAME'."""
    out = []
    for source, copies, pattern, _ in SHARED:
        want = blocks(source, pattern)
        for path in copies:
            have = blocks(path, pattern)
            out += [f"{path.name}: block '{name}'" for name in want if have.get(name) != want[name]]
    return out


def sync() -> None:
    for source, copies, pattern, _ in SHARED:
        want = blocks(source, pattern)
        for path in copies:
            text = path.read_text()
            for m in reversed(list(pattern.finditer(text))):
                text = text[: m.start()] + want[m["name"]] + text[m.end():]
            path.write_text(text)
            print(f"synced {path.name} from {source.name}")


if __name__ == "__main__":
    if "--check" in sys.argv:
        bad = differences()
        print("\n".join(bad) if bad else "the shared blocks are identical")
        sys.exit(1 if bad else 0)
    sync()
