"""A real two-node Slurm cluster for tests, on 127.0.0.1: munged, slurmctld and two slurmd from Debian's packages.

`bash tests/run.sh` installs munge, slurmctld, slurmd and slurm-client (tests/infra/install_slurm.sh); this module
writes a munge key and a `slurm.conf` into a temp folder, starts `munged`, `slurmctld` and
`slurmd -N n1`, `slurmd -N n2` in the foreground (so each PID is the daemon's own), waits until `sinfo` shows both
nodes idle, and at the end cancels every job left, then stops each daemon by its PID.

Both nodes are this machine (NodeAddr=127.0.0.1, each slurmd on its own port). Client commands (`sbatch`,
`sinfo`, `squeue`, `scancel`) find the cluster through `SLURM_CONF` (`env()`), which also names munged's socket.

GPUs: the nodes declare none. With Debian 12's Slurm 22.05 in this setup, `Gres=gpu:N` on the node lines (with
GresTypes=gpu and a gres.conf of stand-in device files) still left every node at `Gres=(null)`, so the cluster is
one whose GPUs Slurm does not track, as on clusters that hand out whole nodes: tests name the GPUs each node has
with `runner up --node-gpus N`, and a GPU plan without it is refused by preflight (no gres). The ranks themselves
are the nanochat test double's (gloo on CPU).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODES = ("n1", "n2")
PARTITION = "debug"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MISSING_SLURM_HINT = ("Slurm is not installed (Debian: apt-get install munge slurmctld slurmd slurm-client). "
                      "Set up with: bash tests/run.sh")


def _sbin(name: str) -> str | None:
    # slurm-wlm-emulator (never installed by tests/run.sh) switches the plain names to a front-end build; the
    # -wlm binaries are the real daemons either way.
    for candidate in (f"/usr/sbin/{name}-wlm", f"/usr/sbin/{name}"):
        if Path(candidate).exists():
            return candidate
    return shutil.which(name)


def find_slurm() -> dict[str, str] | None:
    """Paths of munged, slurmctld, slurmd and sbatch, or None when any is missing."""
    found = {name: _sbin(name) for name in ("munged", "slurmctld", "slurmd")}
    found["sbatch"] = shutil.which("sbatch")
    return found if all(found.values()) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """munged + slurmctld + slurmd n1, n2 under `root`; `env()` is what a client process needs."""

    def __init__(self, root: Path | None = None, max_time: str = "INFINITE"):
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-"))
        self.max_time = max_time
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def partition(self) -> str:
        return PARTITION

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def client(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scancel, ...) against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=timeout)

    # -- configuration ---------------------------------------------------------------------------------------------

    def _munge_key(self) -> None:
        key_dir = self.root / "munge"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        key = key_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    def _write_conf(self) -> None:
        r = self.root
        self.ports = {"ctld": free_port(), **{n: free_port() for n in NODES}}
        lines = [
            "ClusterName=nanochat-test", "SlurmctldHost=localhost", f"SlurmctldPort={self.ports['ctld']}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", f"AuthInfo=socket={r}/munge/munge.sock",
            "CredType=cred/munge", f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
            "SchedulerType=sched/backfill", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "JobAcctGatherType=jobacct_gather/none",
            # Short waits so scancel, node checks and requeues act within seconds in tests.
            "KillWait=5", "MinJobAge=600", "SlurmdTimeout=60", "MessageTimeout=20", "InactiveLimit=0",
        ]
        for node in NODES:
            lines.append(f"NodeName={node} NodeAddr=127.0.0.1 Port={self.ports[node]} CPUs=1 State=UNKNOWN")
        lines.append(f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime={self.max_time} State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        (r / "state").mkdir(exist_ok=True)

    # -- start and stop --------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.procs[name] = subprocess.Popen(argv, env={**os.environ, **self.env()}, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self) -> "SlurmCluster":
        paths = find_slurm()
        if paths is None:
            raise RuntimeError(MISSING_SLURM_HINT)
        self.root.mkdir(parents=True, exist_ok=True)
        self._munge_key()
        self._write_conf()
        m = self.root / "munge"
        try:
            pwd.getpwnam("munge")
        except KeyError:
            raise RuntimeError("The munge user is missing: reinstall the munge package (bash tests/run.sh).") from None
        # -F: foreground (the PID is munged's own); -f: run as root, which the package's service never does.
        self._spawn("munged", [paths["munged"], "-F", "-f", f"--key-file={m}/munge.key", f"--socket={m}/munge.sock",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.sock").exists(), "munged's socket", "munged")
        self._spawn("slurmctld", [paths["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.client("sinfo", "-h", timeout=10).returncode == 0, "slurmctld to answer sinfo", "slurmctld")
        for node in NODES:
            self._spawn(f"slurmd-{node}", [paths["slurmd"], "-D", "-f", str(self.conf), "-N", node])
        self._wait(self._all_idle, f"sinfo to show {', '.join(NODES)} idle", "slurmd-n1")
        return self

    def _all_idle(self) -> bool:
        out = self.client("sinfo", "-h", "-N", "-o", "%N %t", timeout=10).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return all(states.get(node) == "idle" for node in NODES)

    def _wait(self, ready, what: str, daemon: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except (subprocess.TimeoutExpired, ValueError):
                pass
            time.sleep(0.3)
        tail = self.log_tail(daemon)
        self.stop()
        raise RuntimeError(f"Timed out after {STARTUP_TIMEOUT_S:.0f} s waiting for {what}:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a daemon's own output and log file (`slurmd-n1`, `slurmctld`, `munged`)."""
        texts = []
        for path in sorted(self.root.glob(f"{name}.*")) + sorted(self.root.glob(f"munge/{name}.log")):
            texts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def cancel_all(self, timeout: float = 60) -> None:
        """scancel every job of the cluster and wait (bounded) until none is left, so no job step outlives it."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        jobs = self.client("squeue", "-h", "-o", "%i", timeout=10).stdout.split()
        if jobs:
            self.client("scancel", *jobs, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.client("squeue", "-h", "-o", "%i", timeout=10).stdout.strip():
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            self.cancel_all()
        except (subprocess.TimeoutExpired, OSError):
            pass
        # Nodes first, the controller next, munged last (the others authenticate through it while stopping).
        order = [n for n in self.procs if n.startswith("slurmd")] + [n for n in ("slurmctld", "munged") if n in self.procs]
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT_S)
        self.procs.clear()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
