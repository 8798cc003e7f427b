"""The documentation the code relies on lives in the repository: every reference to docs/*.md (with its #section)
and every relative link in the Markdown files resolves inside it, and nothing points at a folder outside it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".txt", ".sh", ".sbatch", ".json", ".ini", ".cfg", ".toml", ".yml", ".yaml", ""}
DOC_REF = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files(root: Path = ROOT) -> list[Path]:
    """The repository's text files: what git tracks; outside a git checkout, a walk of the tree that leaves out
    outputs and virtual environments (a folder holding pyvenv.cfg: their packages cite docs of their own)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
        paths = [root / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "runs", "eval", "logs", "__pycache__", ".pytest_cache"}
        envs = {p.parent for p in root.rglob("pyvenv.cfg")}
        paths = [p for p in root.rglob("*") if not skip & set(p.relative_to(root).parts)
                 and not any(env in p.parents for env in envs)]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES and p.stat().st_size < 2_000_000]


def anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} (.*)", line)
        if in_code or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rules_match_github():
    """The slug rule itself, on headings of this repository's kind."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        md = Path(d) / "x.md"
        md.write_text("# Top\n## CLIP reward (VLM-RM)\n## Stable Diffusion 2.1-base architecture\n```\n# not a heading\n"
                      "```\n## `sac_sds.py`: SAC rewarded\n## Top\n")
        assert anchors(md) == {"top", "clip-reward-vlm-rm", "stable-diffusion-21-base-architecture",
                               "sac_sdspy-sac-rewarded", "top-1"}


def test_no_reference_to_a_path_outside_the_repository():
    outside = ("DESIGN" + ".md", "../" + "shared", "/work/" + "shared")  # (split, so this file does not match)
    hits = [f"{p.relative_to(ROOT)}: {word}" for p in tracked_text_files() for word in outside
            if word in p.read_text(errors="replace")]
    assert hits == []


def test_docs_references_resolve():
    """docs/<name>.md and docs/<name>.md#<section>, wherever code, tests or docs cite them."""
    files = tracked_text_files()
    refs = [(p, m[1], m[2]) for p in files for m in DOC_REF.finditer(p.read_text(errors="replace"))]
    assert len(refs) >= 8  # the code does cite the docs (sac_sds.py, the benchmarks, the tests, the README)
    bad = []
    for where, name, anchor in refs:
        target = ROOT / "docs" / name
        if not target.is_file():
            bad.append(f"{where.relative_to(ROOT)}: docs/{name} does not exist")
        elif anchor and anchor not in anchors(target):
            bad.append(f"{where.relative_to(ROOT)}: docs/{name} has no section #{anchor}")
    assert bad == []


def test_markdown_links_resolve():
    """Relative links in README.md and docs/*.md point at files of the repository (and at sections they have)."""
    bad, checked = [], 0
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in MD_LINK.findall(md.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (md.parent / path).resolve() if path else md
            checked += 1
            if ROOT not in file.parents and file != ROOT:
                bad.append(f"{md.name}: {target} leaves the repository")
            elif not file.exists():
                bad.append(f"{md.name}: {target} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                bad.append(f"{md.name}: {target} names a section {file.name} does not have")
    assert checked >= 5 and bad == []


def test_a_clone_with_a_virtual_environment_inside_passes(tmp_path):
    """The newcomer's path: a clone, `python -m venv .venv` inside it (whose packages cite docs/*.md of their own),
    then the docs checks: they read the repository's files, not the environment's."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    package = clone / ".venv" / "lib" / "python3" / "site-packages" / "somepackage"
    package.mkdir(parents=True)
    (clone / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    missing = "docs/" + "missing.md"  # (split, so that this file cites nothing)
    (package / "README.md").write_text(f"See {missing}#nowhere and [the guide]({missing}).\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs.py",
                           "-k", "not clone"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    outside_git = tmp_path / "tree"  # the same files without git (an unpacked archive)
    subprocess.run(["cp", "-r", str(clone), str(outside_git)], check=True)
    subprocess.run(["rm", "-rf", str(outside_git / ".git")], check=True)
    found = {p.relative_to(outside_git).parts[0] for p in tracked_text_files(outside_git)}
    assert ".venv" not in found and "README.md" in found
