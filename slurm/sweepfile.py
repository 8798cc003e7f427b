"""Reads a sweep file: the task list of slurm/sweep.sbatch (and of slurm/submit.sh and slurm/eval.sbatch).

    python slurm/sweepfile.py list slurm/sweeps/pendulum.txt    # task, line, run folder, command
    python slurm/sweepfile.py check slurm/sweeps/pendulum.txt   # validates; prints the number of tasks
    python slurm/sweepfile.py runs slurm/sweeps/pendulum.txt    # runs/NAME of every task, one a line
    python slurm/sweepfile.py task slurm/sweeps/pendulum.txt 3  # task 3 as bash assignments (for sweep.sbatch)
    python slurm/sweepfile.py eval-args slurm/sweeps/pendulum.txt  # the "# eval:" flags (for eval.sbatch)

A sweep file holds one training command per line, written as in a shell:

    # Pendulum, CLIP reward      <- a comment: skipped, as are blank lines
    sac_clip.py --env-id Pendulum-v1 --prompt "a pendulum pointing up" --seed 1   # a trailing comment is fine

The lines that hold a command are tasks 0, 1, 2, ... in file order; submit.sh sizes the array from the same
list, so task i is always the i-th command. A command starts with the script (an optional leading "python" is
dropped) and uses shell quoting only: no variables, pipes or line continuations. A command may start with the path
of the python to run it with instead, e.g. `.venv-metaworld/bin/python sac_env_reward.py --env-id
metaworld/door-close-v3` (a Meta-World row: its own virtual environment); the others run with $PYTHON.

Every task gets a stable run name, runs/SWEEP__SCRIPT__ENV__PROMPT__sSEED__HASH, where HASH is a hash of the
parsed command (so spacing, quoting style and comments do not matter, but any change of a flag gives a new
run) and SWEEP is the sweep file's name without .txt. PROMPT is the first --prompt, or for a --prompt-schedule its
texts joined by "then" ("0:a person standing;200:a person jumping" -> a-person-standing-then-a-person-jumping). The name depends on neither the line number nor the job
id: a requeued task, or the same sweep submitted again, finds its own run folder and resumes it. A line with
its own --run-name keeps it. Two lines that name the same run are an error.

A comment of the form `# eval: FLAGS` gives flags for the evaluation of the sweep's runs (eval_videos.py, run by
slurm/eval.sbatch), e.g. `# eval: --clip-model-id demo/pendulum-clip --prompt "a pendulum pointing up"`; several
such comments add up.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

PYTHONS = {"python", "python3"}
FORBIDDEN = {"--resume": "sweep.sbatch adds --resume itself when the run folder has a checkpoint",
             "--help": "a sweep task must train", "-h": "a sweep task must train"}


class SweepError(Exception):
    """A problem with a sweep file, reported as one line `error: FILE line N: ...`."""


@dataclass
class Task:
    index: int       # array task id
    line: int        # 1-based line number in the sweep file
    text: str        # the line as written (stripped)
    argv: list[str]  # script and flags, as parsed
    run_name: str
    python: str = ""  # the python the line names (its own virtual environment), "" for the sweep's $PYTHON

    @property
    def script(self) -> str:
        return self.argv[0]

    def fresh_command(self) -> list[str]:
        """The first start: the line's own flags, plus a fixed run name and no progress bar (logs are files)."""
        extra = [] if flag_value(self.argv, "--run-name") is not None else ["--run-name", self.run_name]
        if not any(a in ("--progress", "--no-progress") or a.startswith("--progress=") for a in self.argv):
            extra.append("--no-progress")
        return self.argv + extra

    def resume_command(self) -> list[str]:
        """After a requeue: the script continues from runs/NAME/checkpoint.pt with its saved args.json."""
        return [self.script, "--resume", f"runs/{self.run_name}"]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of --flag (also written --flag=value, or with underscores as tyro accepts), else None."""
    names = {flag, "--" + flag[2:].replace("-", "_")}
    for i, a in enumerate(argv[1:], start=1):
        if a in names:
            return argv[i + 1] if i + 1 < len(argv) else ""
        for name in names:
            if a.startswith(name + "="):
                return a[len(name) + 1:]
    return None


def slug(text: str, limit: int) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")
    return s[:limit].rstrip("-.")


def prompt_slug(argv: list[str]) -> str:
    """The PROMPT part of a run name: the first --prompt, else the texts of --prompt-schedule joined by "then"."""
    prompt = flag_value(argv, "--prompt")
    if prompt:
        return slug(prompt, 40)
    schedule = flag_value(argv, "--prompt-schedule")
    if schedule:
        texts = [entry.split(":", 1)[1] for entry in schedule.split(";") if ":" in entry]
        return slug(" then ".join(texts), 40)
    return ""


def run_name(sweep: str, argv: list[str]) -> str:
    own = flag_value(argv, "--run-name")
    if own is not None:
        return own
    script = Path(argv[0]).stem
    parts = [sweep, script[4:] if script.startswith("sac_") else script]
    env_id, seed = (flag_value(argv, f) for f in ("--env-id", "--seed"))
    if env_id:
        parts.append(slug(env_id, 40))
    parts.append(prompt_slug(argv))
    if seed is not None:
        parts.append("s" + slug(seed, 10))
    digest = hashlib.sha1("\0".join(argv).encode()).hexdigest()[:8]
    return "__".join(p for p in parts if p) + "__" + digest


def sweep_name(path: Path) -> str:
    name = path.name[:-4] if path.name.endswith(".txt") else path.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"{path}: name the sweep file with letters, digits, '.', '_' or '-' (it prefixes run names)")
    return name


def read_tasks(path: str | Path, check_scripts: bool = False) -> list[Task]:
    """All tasks of a sweep file, validated; check_scripts also wants each script in the current folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepError(f"cannot read sweep file {path}: {e.strerror}") from None
    sweep = sweep_name(path)
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path} line {number}"
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as e:
            raise SweepError(f"{where}: cannot parse ({e}): {line.strip()}") from None
        if not argv:
            continue  # blank or comment
        python = ""
        if argv[0] in PYTHONS:
            argv = argv[1:]
        elif Path(argv[0]).name in PYTHONS and len(argv) > 1:
            python, argv = argv[0], argv[1:]
        if not argv or not argv[0].endswith(".py"):
            raise SweepError(f"{where}: a command starts with the training script, e.g. "
                             f"sac_env_reward.py --env-id Hopper-v4 --seed 1 (got: {line.strip()})")
        for a in argv[1:]:
            key = a.split("=", 1)[0]
            if key in FORBIDDEN:
                raise SweepError(f"{where}: remove {key}: {FORBIDDEN[key]}")
        if check_scripts and not Path(argv[0]).is_file():
            raise SweepError(f"{where}: {argv[0]} not found in {Path.cwd()}; submit from the folder that holds "
                             "the training scripts (the repository root)")
        name = run_name(sweep, argv)
        if not re.fullmatch(r"[A-Za-z0-9._=+-][A-Za-z0-9._=+-]*", name) or name in (".", ".."):
            raise SweepError(f"{where}: run name {name!r}: use letters, digits and . _ - = + only")
        if name in seen:
            raise SweepError(f"{where}: same run as line {seen[name]} (runs/{name}); remove one or change a flag "
                             "(e.g. --seed)")
        seen[name] = number
        tasks.append(Task(len(tasks), number, line.strip(), argv, name, python))
    return tasks


EVAL_DIRECTIVE = re.compile(r"^\s*#\s*eval:(.*)$")


def eval_args(path: str | Path) -> list[str]:
    """The flags of the file's `# eval: ...` comments, in order."""
    path = Path(path)
    flags: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        m = EVAL_DIRECTIVE.match(line)
        if m:
            try:
                flags += shlex.split(m.group(1), comments=True)
            except ValueError as e:
                raise SweepError(f"{path} line {number}: cannot parse the eval flags ({e})") from None
    return flags


def _bash(name: str, value) -> str:
    if isinstance(value, list):
        return f"{name}=({' '.join(shlex.quote(v) for v in value)})"
    return f"{name}={shlex.quote(str(value))}"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    usage = ("usage: sweepfile.py list|check|runs|eval-args SWEEP_FILE\n"
             "       sweepfile.py task SWEEP_FILE INDEX")
    actions = ("list", "check", "runs", "task", "eval-args")
    if len(argv) < 2 or argv[0] not in actions or len(argv) != (3 if argv[0] == "task" else 2):
        print(usage, file=sys.stderr)
        return 2
    action, path = argv[0], argv[1]
    try:
        tasks = read_tasks(path, check_scripts=action == "check")
        if not tasks:
            raise SweepError(f"{path}: no commands (only blank lines and comments)")
        if action == "check":
            eval_args(path)
            print(len(tasks))
        elif action == "eval-args":
            print(_bash("eval_args", eval_args(path)))
        elif action == "runs":
            print("\n".join(f"runs/{t.run_name}" for t in tasks))
        elif action == "list":
            for t in tasks:
                print(f"{t.index:4d}  line {t.line:<4d} runs/{t.run_name}\n      {shlex.join(t.argv)}")
        else:
            try:
                t = tasks[int(argv[2])]
            except (ValueError, IndexError):
                raise SweepError(f"{path} has tasks 0-{len(tasks) - 1}, not {argv[2]!r}: was the array sized "
                                 "from another version of the file? Submit with slurm/submit.sh") from None
            for name, value in (("sweep", sweep_name(Path(path))), ("line", t.line), ("run_name", t.run_name),
                                ("command", shlex.join(t.argv)), ("script", t.script), ("python", t.python),
                                ("fresh", t.fresh_command()), ("resume", t.resume_command())):
                print(_bash(name, value))
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
