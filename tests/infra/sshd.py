"""A real SSH server for tests: OpenSSH's sshd on 127.0.0.1, a key-authorized test user, and stand-in GPUs.

`bash tests/run.sh` installs openssh-server (tests/infra/install_sshd.sh); this module starts a private sshd (own
config, host key, pidfile, port picked free) and stops it by PID. The test user is made once with `useradd` and
kept (made idempotently; `usermod -p '*'` unlocks it for key logins); its `~/.nanochat-runner` is wiped on each
start, so every session installs from scratch.

The laptop side gets a client key (authorized for the user) and a known_hosts file holding the server's key, so
tests exercise real host-key checking: `RUNNER_SSH_KNOWN_HOSTS` points the SSH backend at it.

GPUs: a fake `nvidia-smi` in a folder that sshd puts first on the PATH of every session (`SetEnv PATH=...`, as
an admin would configure a host). It prints realistic `--query-gpu` CSV / `-L` lines for the number of GPUs in
the file `gpu-count` (and the driver in `driver`); `set_gpus(None)` removes it, as on a host without a driver.
`host_env` adds more variables the same way (the Docker test sets DOCKER_HOST to the test engine's socket).
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

USER = "nanochat-ssh-test"
STARTUP_TIMEOUT_S = 20.0
SSHD = "/usr/sbin/sshd"
MISSING_SSHD_HINT = "sshd is not installed (Debian: apt-get install openssh-server). Set up with: bash tests/run.sh"

FAKE_NVIDIA_SMI = r"""#!/bin/bash
# Test stand-in for nvidia-smi: N H100s (N from gpu-count beside this script), the driver from `driver`.
here=$(dirname "$(readlink -f "$0")")
n=$(cat "$here/../gpu-count" 2>/dev/null || echo 8)
driver=$(cat "$here/../driver" 2>/dev/null || echo 570.124.06)
if [[ " $* " == *" -L "* ]]; then
    for ((i = 0; i < n; i++)); do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-00000000000$i)"; done
    exit 0
fi
if [[ "$*" == *--query-gpu=* ]]; then
    for ((i = 0; i < n; i++)); do echo "$i, NVIDIA H100 80GB HBM3, 81559, $driver"; done
    exit 0
fi
echo "NVIDIA-SMI $driver    Driver Version: $driver    CUDA Version: 12.8"
"""


def find_sshd() -> str | None:
    return SSHD if Path(SSHD).exists() else shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The test user (created once, kept between sessions), unlocked for key logins, with an empty runner folder."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = _run("useradd", "--create-home", "--shell", "/bin/bash", name)
        if result.returncode not in (0, 9):  # 9: it exists (another session made it just now)
            raise RuntimeError(f"useradd {name} failed: {result.stderr}")
        entry = pwd.getpwnam(name)
    _run("usermod", "-p", "*", name)  # a user with a locked password ('!') cannot log in even with a key
    shutil.rmtree(Path(entry.pw_dir) / ".nanochat-runner", ignore_errors=True)
    return entry


class SSHHost:
    """sshd on 127.0.0.1:<free port> for `user`; `target` is what `runner up --host` takes."""

    def __init__(self, root: Path | None = None, user: str = USER, host_env: dict[str, str] | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="sshd-"))
        self.user = user
        self.host_env = dict(host_env or {})
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.user).pw_dir)

    def env(self) -> dict[str, str]:
        """Variables for a laptop-side `runner` process: trust exactly this server's key."""
        return {"RUNNER_SSH_KNOWN_HOSTS": str(self.known_hosts)}

    def set_gpus(self, count: int | None, driver: str = "570.124.06") -> None:
        """`count` stand-in GPUs on the host; None: no nvidia-smi at all."""
        smi = self.root / "gpu-bin" / "nvidia-smi"
        if count is None:
            smi.unlink(missing_ok=True)
            return
        smi.write_text(FAKE_NVIDIA_SMI)
        smi.chmod(0o755)
        (self.root / "gpu-count").write_text(f"{count}\n")
        (self.root / "driver").write_text(f"{driver}\n")

    def _keygen(self, path: Path) -> None:
        if not path.exists():
            result = _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"nanochat-runner-test-{path.name}", "-f", str(path))
            if result.returncode:
                raise RuntimeError(f"ssh-keygen failed: {result.stderr}")

    def start(self) -> "SSHHost":
        sshd = find_sshd()
        if not sshd:
            raise RuntimeError(MISSING_SSHD_HINT)
        ensure_user(self.user)
        # sshd reads the authorized keys as the user: every folder on the way must be traversable, the file readable.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "gpu-bin").mkdir(exist_ok=True)
        (self.root / "gpu-bin").chmod(0o755)
        self.set_gpus(8)
        self._keygen(self.root / "host_ed25519")
        self._keygen(self.client_key)
        authorized = self.root / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o644)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
        self.port = free_port()
        path = f"{self.root / 'gpu-bin'}:/usr/local/bin:/usr/bin:/bin"
        set_env = " ".join(f'"{k}={v}"' for k, v in {"PATH": path, **self.host_env}.items())
        (self.root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_ed25519'}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp",
            f"AllowUsers {self.user}", f"SetEnv {set_env}", "LogLevel INFO", "",
        ]))
        host_pub = (self.root / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self._log = (self.root / "sshd.log").open("ab")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not answer on 127.0.0.1:{self.port} within {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return (self.root / "sshd.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command on the host as the test user with the system's ssh client (independent of the backend)."""
        cmd = ["ssh", "-p", str(self.port), "-i", str(self.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{self.user}@127.0.0.1", command]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def user_processes(self) -> list[str]:
        """'PID ARGS' of every process the test user runs (sshd's session processes excluded)."""
        out = _run("ps", "-u", self.user, "-o", "pid=,args=").stdout
        # sshd's own per-connection processes (and their zombies, reaped by the root sshd) are not the run's.
        return [line.strip() for line in out.splitlines() if line.strip() and "sshd" not in line.split(None, 1)[-1][:8]]

    def kill_user_processes(self) -> None:
        """Stop whatever the test user still runs (a failed test's run), by PID, so the next test starts clean."""
        for line in self.user_processes():
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # sshd's per-connection children (its own session) end with their connections; end any that linger.
        self.kill_user_processes()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
