"""A real one-node SLURM cluster for tests: Debian's slurm-wlm + munge, run as root, with a fake GPU gres.

`OneNodeCluster(folder).start()` writes /etc/slurm/slurm.conf and gres.conf (state and logs go under
`folder`), starts munged (unless one already answers), slurmctld and slurmd on free ports, and waits until
the node is idle; `stop()` kills every daemon it started and removes the two files. The files must sit at
the default path: the Snakemake jobstep inside each job drops SLURM_* variables (SLURM_CONF included)
before its `srun`. A slurm.conf that this module did not write is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")
FAKE_GPU_FILES = ("/dev/null", "/dev/zero")
FAKE_GPUS = len(FAKE_GPU_FILES)
CONF_DIR = Path("/etc/slurm")
MARK = "# kdflow test cluster (tests/slurm_cluster.py); removed when the test stops\n"


def ensure_installed() -> str | None:
    """Install slurm-wlm and munge with apt when missing; the reason they cannot be, else None."""
    if all(shutil.which(d) or Path(f"/usr/sbin/{d}").exists() for d in DAEMONS):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm is not installed and this machine cannot install it (needs root and apt-get)"
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {proc.stderr[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class OneNodeCluster:
    """slurmctld + slurmd on this machine: partitions `cpu` (default) and `gpu`, fake GPUs as gres."""

    def __init__(self, folder: Path, cpus: int | None = None):
        self.folder = Path(folder)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = _memory_mb() - 1024
        self.started: list[subprocess.Popen | int] = []

    conf = CONF_DIR / "slurm.conf"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(base or os.environ), "SLURM_CONF": str(self.conf)}

    def foreign_config(self) -> str | None:
        """Why this machine's slurm.conf must not be replaced (another cluster's), else None."""
        if self.conf.exists() and not self.conf.read_text().startswith(MARK):
            return f"{self.conf} exists and belongs to another cluster: not replacing it"
        return None

    def write_config(self) -> None:
        f = self.folder
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            MARK
            + "\n".join(
                [
                    "ClusterName=kdflowtest",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"StateSaveLocation={f / 'state'}",
                    f"SlurmdSpoolDir={f / 'spool'}",
                    f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                    f"SlurmdPidFile={f / 'slurmd.pid'}",
                    f"SlurmctldLogFile={f / 'slurmctld.log'}",
                    f"SlurmdLogFile={f / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "GresTypes=gpu",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MinJobAge=3600",  # finished jobs stay visible to squeue/scontrol (no accounting here)
                    "ReturnToService=2",
                    "SlurmdTimeout=60",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
                    f"Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
                    "PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # Slurm counts a GPU per device file; two character devices every machine has stand in for them.
        gres = "".join(f"NodeName={self.node} Name=gpu File={dev}\n" for dev in FAKE_GPU_FILES)
        (CONF_DIR / "gres.conf").write_text(MARK + "AutoDetect=off\n" + gres)

    def _munge_answers(self) -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return cred.returncode == 0 and check.returncode == 0

    def _start_munge(self) -> None:
        if self._munge_answers():
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        pid_file = run_dir / "munged.pid"
        self._wait(self._munge_answers, "munged")
        if pid_file.exists():
            self.started.append(int(pid_file.read_text().split()[0]))

    def _wait(self, ready, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; logs under {self.folder}")

    def _node_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True)
        return proc.stdout.strip().split("\n")[0] if proc.returncode == 0 else ""

    def start(self) -> OneNodeCluster:
        reason = self.foreign_config()
        if reason:
            raise RuntimeError(reason)
        self.write_config()
        self._start_munge()
        env = self.env()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.folder / f"{daemon}.out", "w")
            args = [f"/usr/sbin/{daemon}", "-D", "-f", str(self.conf)]
            if daemon == "slurmctld":
                args.append("-c")  # clean start: no state from an earlier cluster
            self.started.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1.0)
        try:
            self._wait(lambda: self._node_state() in ("idle", "mixed"), "the slurm node")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.started):
            if isinstance(proc, subprocess.Popen):
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                try:
                    os.kill(proc, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.started.clear()
        for name in ("slurm.conf", "gres.conf"):
            path = CONF_DIR / name
            if path.exists() and path.read_text().startswith(MARK):
                path.unlink()

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers (finished ones included), as `scontrol show job` fields."""
        proc = subprocess.run(["scontrol", "-o", "show", "job"], env=self.env(), capture_output=True, text=True)
        jobs = []
        for line in proc.stdout.splitlines():
            fields = {}
            for token in line.split():
                key, _, value = token.partition("=")
                fields[key] = value
            jobs.append(fields)
        return jobs
