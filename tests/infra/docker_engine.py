"""A real Docker engine for tests: Debian's dockerd, started and stopped by the test suite itself.

`bash tests/run.sh` installs it (`apt-get install docker.io debootstrap`, see tests/infra/install_docker.sh). Each
engine gets its own data-root, exec-root, pidfile and socket under a short temp dir, so it never touches a system
engine, and tests reach it through `DOCKER_HOST=unix://<root>/docker.sock`.

There is no GPU here. With an executable named `nvidia-container-runtime-hook` on dockerd's PATH when it starts,
dockerd registers its NVIDIA device driver, so GPU requests (`--gpus`, compose's `deploy.resources.reservations
.devices`, the SDK's `DeviceRequest`) are accepted and show up in the container as `NVIDIA_VISIBLE_DEVICES`. The
stand-in hook written here only reads its stdin and exits 0. An engine started with `nvidia_hook=False` has no
such driver: a GPU request fails at container start, exactly as on a box without the NVIDIA container toolkit.

Stopping is by PID: SIGTERM, a bounded wait, SIGKILL. dockerd leaves `<exec-root>/netns/default` mounted and, with
a bridge, a `docker0` link behind; both are removed. Only one engine at a time may own `docker0` and the iptables
chains, so a second engine in a session is started with `bridge=False` (no bridge, no iptables; its containers use
`network_mode="none"`), and engines with a bridge in other test sessions on this machine (a developer's run beside
CI's) take turns through a file lock, waiting at most LOCK_WAIT_S.

By hand: `python -m tests.infra.docker_engine` starts one in the foreground and prints its DOCKER_HOST.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
LOCK_WAIT_S = 1800.0
LOCK_FILE = Path("/tmp/nanochat-runner-tests-dockerd.lock")
HOOK = "nvidia-container-runtime-hook"
HOOK_SCRIPT = "#!/bin/sh\n# Test stand-in for the NVIDIA container toolkit's hook: accept the OCI state, change nothing.\ncat >/dev/null\nexit 0\n"
MISSING_DOCKERD_HINT = "dockerd is not installed (Debian package docker.io). Set up the test environment with: bash tests/run.sh"


def find_dockerd() -> str | None:
    return shutil.which("dockerd") or next((p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None)


class DockerEngine:
    """One dockerd with everything under `root`; `host` is the DOCKER_HOST to reach it."""

    def __init__(self, root: Path | None = None, nvidia_hook: bool = True, bridge: bool = True):
        # Short paths: unix socket paths are limited to 108 bytes, and containerd nests its sockets under exec-root.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
        self.nvidia_hook, self.bridge = nvidia_hook, bridge
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._lock = None

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def env(self) -> dict[str, str]:
        """Variables that point the docker CLI, compose and the SDK at this engine."""
        return {"DOCKER_HOST": self.host}

    def client(self, timeout: int = 120):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def start(self) -> "DockerEngine":
        dockerd = find_dockerd()
        if not dockerd:
            raise RuntimeError(MISSING_DOCKERD_HINT)
        bin_dir = self.root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        # PATH decides whether dockerd registers the NVIDIA driver: our stand-in first, or no hook anywhere.
        path = [p for p in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep) if p and not (Path(p) / HOOK).exists()]
        if self.nvidia_hook:
            hook = bin_dir / HOOK
            hook.write_text(HOOK_SCRIPT)
            hook.chmod(0o755)
            path.insert(0, str(bin_dir))
        for extra in ("/usr/sbin", "/sbin"):
            if extra not in path:
                path.append(extra)
        cmd = [
            dockerd,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--host", self.host,
        ]
        if not self.bridge:
            cmd += ["--bridge=none", "--iptables=false", "--ip-masq=false"]
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        env["PATH"] = os.pathsep.join(path)
        if self.bridge:
            self._take_bridge_lock()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._wait_ready()
        return self

    def _take_bridge_lock(self) -> None:
        self._lock = LOCK_FILE.open("a")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock.close()
                    self._lock = None
                    raise RuntimeError(f"Another test session's dockerd has held {LOCK_FILE} for {LOCK_WAIT_S:.0f} s (docker0 is taken).")
                time.sleep(1.0)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._cleanup()
                raise RuntimeError(f"dockerd exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if (self.root / "docker.sock").exists():
                try:
                    client = self.client(timeout=5)
                    client.ping()
                    client.close()
                    return
                except Exception as e:  # noqa: BLE001 - not ready yet; keep the last reason for the error
                    last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dockerd did not answer within {STARTUP_TIMEOUT_S:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop dockerd by PID (its containers with it) and remove what it leaves behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        # Deepest first, lazily: netns/default and any overlay a killed dockerd did not unmount.
        for mount in sorted(_mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        if self.bridge and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, timeout=30)
        if self._lock is not None:  # closing the file releases the lock for the next session's engine
            self._lock.close()
            self._lock = None

    def remove(self) -> None:
        """Delete the engine's folder (images, containers, logs); only after `stop`."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "DockerEngine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return [p for p in points if p.startswith(prefix)]


def main() -> int:  # pragma: no cover - a manual helper
    engine = DockerEngine().start()
    print(f"export DOCKER_HOST={engine.host}   (Ctrl+C stops it; log: {engine.log_path})", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
        engine.remove()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
