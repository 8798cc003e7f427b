"""A throwaway single-node SLURM on this machine: munged + slurmctld + slurmd, all state in one folder.

For trying sweeps without a cluster and for tests/test_slurm.py. Needs root and the Debian packages
slurm-wlm and munge (22.05); nothing in /etc is touched: the key, config, sockets, spool and logs live in DIR.

    python slurm/localslurm.py start /tmp/myslurm     # prints: export SLURM_CONF=/tmp/myslurm/slurm.conf
    export SLURM_CONF=/tmp/myslurm/slurm.conf
    PYTHON=$(which python) GPUS=0 CPUS=1 MEM=1G TIME=30 slurm/submit.sh slurm/sweeps/pendulum.txt
    python slurm/localslurm.py stop /tmp/myslurm

The cluster is one node (this host, at 127.0.0.1) in one partition "local", on free ports, with
select/cons_tres, proctrack/linuxproc, task/none, no accounting database (use squeue/scontrol, not sacct;
finished jobs are logged in DIR/log/jobcomp.txt), a short requeue delay (cred_expire) and a fast scheduler.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def missing_binaries() -> list[str]:
    """The SLURM and munge programs not found on PATH (also looked up in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _which(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: install the Debian packages slurm-wlm and munge")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class LocalSlurm:
    """One node, one partition, everything under `root`. `start()` returns when the node is idle."""

    def __init__(self, root: str | Path, cpus: int | None = None, memory_mb: int = 4000, cred_expire: int = 5):
        self.root = Path(root).resolve()
        self.cpus = cpus or max(2, os.cpu_count() or 2)
        self.memory_mb = memory_mb
        self.cred_expire = cred_expire  # also the wait before a requeued job may start again (SLURM's default: 120 s)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    # -- environment for client commands (sbatch, squeue, ...) -------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for var in [k for k in env if k.startswith(("SBATCH_", "SQUEUE_", "SLURM_")) and k != "SLURM_CONF"]:
            del env[var]  # a surrounding SLURM job's settings must not leak into the test cluster
        return env

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(kw.pop("env", None)), text=True, capture_output=True,
                              check=check, **kw)

    # -- configuration -----------------------------------------------------------------------------------------
    def write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", f"spool/{self.node}", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged insists: key readable by its owner only, socket folder and its parents searchable by everyone
        os.chmod(r, 0o755)
        os.chmod(r / "munge", 0o755)
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = _free_port(), _free_port()
        self.conf.write_text(f"""\
# written by slurm/localslurm.py: a single-node test cluster
ClusterName=localslurm
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
KillWait=10
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=local Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # not read with proctrack/linuxproc and task/none; present so that no plugin looks for /etc/slurm/cgroup.conf
        (r / "cgroup.conf").write_text("CgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\n")

    # -- daemons -----------------------------------------------------------------------------------------------
    def _pids(self) -> dict[str, int]:
        pids = {}
        for name, f in (("slurmd", "slurmd.pid"), ("slurmctld", "slurmctld.pid"), ("munged", "munge/munged.pid")):
            try:
                pids[name] = int((self.root / f).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def _log_tail(self, name: str, n: int = 15) -> str:
        path = self.root / "log" / name if name != "munged.log" else self.root / "munge" / "munged.log"
        try:
            return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return f"--- {path}: missing ---"

    def start(self, timeout: float = 60) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise RuntimeError("a local SLURM needs root (slurmd launches jobs and runs as SlurmUser=root)")
        self.write_config()
        r = self.root
        env = self.env()
        subprocess.run([_which("munged"), f"--socket={self.munge_socket}", f"--key-file={r}/munge/munge.key",
                        f"--pid-file={r}/munge/munged.pid", f"--log-file={r}/munge/munged.log",
                        f"--seed-file={r}/munge/munged.seed"], env=env, check=True, capture_output=True, text=True)
        for daemon in ("slurmctld", "slurmd"):
            result = subprocess.run([_which(daemon), "-f", str(self.conf)], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                self.stop()
                raise RuntimeError(f"{daemon} failed to start: {result.stderr.strip()}\n{self._log_tail(daemon + '.log')}")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = result.stdout.strip()
            if result.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        logs = "\n".join(self._log_tail(f) for f in ("munged.log", "slurmctld.log", "slurmd.log"))
        self.stop()
        raise RuntimeError(f"the local SLURM node did not become idle in {timeout:.0f} s (state {state!r})\n{logs}")

    def stop(self, timeout: float = 30) -> None:
        """Cancels what is still queued or running, then stops slurmd, slurmctld and munged (by their pid files)."""
        if self.conf.exists() and "slurmctld" in self._pids():
            try:
                self.run("scancel", "--user=root", check=False, timeout=20)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    result = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False, timeout=20)
                    states = result.stdout.split()[1::2]
                    if result.returncode != 0 or not any(s in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")
                                                         for s in states):
                        break
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass  # slurmctld does not answer: stop the daemons anyway
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pids().get(name)
            if pid is None or not _alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # -- queries used by the tests -----------------------------------------------------------------------------
    def jobs(self) -> dict[str, str]:
        """Job id (array tasks as ARRAYID_TASK) -> state, for everything slurmctld still remembers."""
        result = self.run("squeue", "-h", "-t", "all", "-r", "-o", "%i %T", check=False)
        return dict(line.split()[:2] for line in result.stdout.splitlines() if line.strip())

    def show_job(self, job_id: str) -> dict[str, str]:
        result = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields = {}
        for token in result.stdout.split():
            if "=" in token:
                k, v = token.split("=", 1)
                fields.setdefault(k, v)
        return fields

    def wait(self, job_ids, timeout: float, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                                                    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")) -> dict:
        """Waits until every job (or array task) id in job_ids is in a final state; returns id -> state.
        An array job id given alone stands for all its tasks."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            states = {}
            for jid in job_ids:
                jid = str(jid)
                tasks = {k: v for k, v in jobs.items() if k == jid or k.startswith(jid + "_")}
                states.update(tasks or {jid: "UNKNOWN"})
            if all(s in until for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout:.0f} s: {states}\n{self._log_tail('slurmctld.log')}")
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", help="folder for the key, config, state and logs (created)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs the node offers (default: this machine's, at least 2)")
    parser.add_argument("--memory-mb", type=int, default=4000, help="memory the node offers, in MB")
    a = parser.parse_args()
    cluster = LocalSlurm(a.dir, cpus=a.cpus, memory_mb=a.memory_mb)
    if a.action == "start":
        if missing := missing_binaries():
            sys.exit(f"error: {', '.join(missing)} not found: apt-get install slurm-wlm munge")
        try:
            cluster.start()
        except (RuntimeError, subprocess.CalledProcessError) as e:
            sys.exit(f"error: {getattr(e, 'stderr', None) or e}")
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()


if __name__ == "__main__":
    main()
