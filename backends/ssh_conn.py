"""One SSH connection to a GPU host, with its host key checked: run a script, stream a command, upload a folder.

paramiko is imported here only, and only when a connection is made, so `runner --help` stays fast.

Host keys are checked against known_hosts (`~/.ssh/known_hosts`, or the file `RUNNER_SSH_KNOWN_HOSTS` names).
An unknown host is an error that shows the key's fingerprint and how to trust it; a changed key is an error too.
Only `accept_new=True` (`--accept-new-host-key`) adds an unknown key, and says so.

Scripts go to `bash -s` on the host through stdin, never on a command line: that is how credentials reach the
run without showing in the host's process list, sshd's logs or any file.
"""

from __future__ import annotations

import getpass
import io
import os
import shlex
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, quote, urlsplit

from .base import BackendError

CONNECT_TIMEOUT_SEC = 20
HOST_SETUP = ["Check the host by hand: `ssh -p PORT USER@HOST true` must log in without a password prompt."]


@dataclass(frozen=True)
class Target:
    """Where to log in: user@host:port, and the key to use (None: ~/.ssh/config, the agent, ~/.ssh/id_*)."""

    user: str
    host: str
    port: int = 22
    identity: str | None = None

    @classmethod
    def parse(cls, text: str, identity: str | None = None) -> "Target":
        """From `user@host[:port]` (or a Host alias of ~/.ssh/config)."""
        user, _, hostport = text.rpartition("@")
        host, _, port = hostport.partition(":")
        if not host or (port and not port.isdigit()):
            raise BackendError(f"--host {text!r} is not USER@HOST[:PORT].", ["Write it as --host ubuntu@203.0.113.7:22 (user and port optional)."])
        config = _ssh_config(host)
        identity = identity or (config.get("identityfile") or [None])[0]
        return cls(
            user=user or config.get("user") or getpass.getuser(),
            host=config.get("hostname", host),
            port=int(port or config.get("port", 22)),
            identity=str(Path(identity).expanduser().resolve()) if identity else None,
        )

    def url(self, run_id: str = "") -> str:
        """The handle: ssh://user@host:port/RUN[?identity=KEY], enough to find the run again from any terminal."""
        query = f"?identity={quote(self.identity)}" if self.identity else ""
        return f"ssh://{self.user}@{self.host}:{self.port}/{run_id}{query}"

    @classmethod
    def from_url(cls, handle: str) -> tuple["Target", str]:
        parts = urlsplit(handle if "://" in handle else "ssh://" + handle)
        if not parts.hostname:
            raise BackendError(f"{handle!r} names no host.", ["Use the handle `runner up` printed: ssh://USER@HOST:PORT/RUN_ID."])
        identity = parse_qs(parts.query).get("identity", [None])[0]
        return cls(parts.username or getpass.getuser(), parts.hostname, parts.port or 22, identity), parts.path.strip("/")

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _ssh_config(alias: str) -> dict:
    path = Path("~/.ssh/config").expanduser()
    if not path.is_file():
        return {}
    import paramiko

    return paramiko.SSHConfig.from_path(str(path)).lookup(alias)


def known_hosts_path() -> Path:
    return Path(os.environ.get("RUNNER_SSH_KNOWN_HOSTS") or "~/.ssh/known_hosts").expanduser()


def _host_id(target: Target) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def _fingerprint(key) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _policy(target: Target, accept_new: bool, log):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            where = known_hosts_path()
            if not accept_new:
                scan = f"ssh-keyscan {'-p %d ' % target.port if target.port != 22 else ''}-t {key.get_name()} {target.host} >> {where}"
                if not where.parent.is_dir():
                    scan = f"mkdir -p -m 700 {where.parent} && {scan}"
                raise BackendError(
                    f"The host key of {_host_id(target)} is not in {where}: {key.get_name()} {_fingerprint(key)}. "
                    "Nothing was sent to the host.",
                    [
                        "Compare that fingerprint with the host's own (your provider's console, or on the host: "
                        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`).",
                        f"If they match, trust it: `{scan}` (or log in once with `ssh -p {target.port} {target.user}@{target.host}`).",
                        "Or run this command again with --accept-new-host-key, which adds the key to known_hosts.",
                    ],
                )
            where.parent.mkdir(parents=True, exist_ok=True)
            with where.open("a") as f:
                f.write(f"{_host_id(target)} {key.get_name()} {key.get_base64()}\n")
            log(f"ssh: added the new host key of {_host_id(target)} to {where}: {key.get_name()} {_fingerprint(key)}")

    return Policy()


class Connection:
    """A logged-in SSH session to `target`; close it when done (or use it as a context manager)."""

    def __init__(self, target: Target, accept_new_host_key: bool = False, log=lambda _m: None):
        try:
            import paramiko
        except ImportError:
            raise BackendError("The SSH backend needs paramiko, which is not installed.",
                               ["pip install 'nanochat-runner[ssh]' (or: pip install 'paramiko>=3.4')."]) from None
        self.target = target
        self.client = paramiko.SSHClient()
        where = known_hosts_path()
        if where.exists():
            self.client.load_host_keys(str(where))
        self.client.set_missing_host_key_policy(_policy(target, accept_new_host_key, log))
        keys = {"key_filename": [target.identity], "look_for_keys": False, "allow_agent": False} if target.identity else {}
        if target.identity and not Path(target.identity).is_file():
            raise BackendError(f"The identity file {target.identity} does not exist.", ["Pass --identity with the private key authorized on the host."])
        try:
            self.client.connect(target.host, port=target.port, username=target.user, timeout=CONNECT_TIMEOUT_SEC,
                                banner_timeout=CONNECT_TIMEOUT_SEC, auth_timeout=CONNECT_TIMEOUT_SEC, **keys)
        except BackendError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as e:
            self.client.close()
            raise BackendError(
                f"The host key of {_host_id(target)} CHANGED: it offers {e.key.get_name()} {_fingerprint(e.key)}, "
                f"but {where} holds {_fingerprint(e.expected_key)}. Someone may be intercepting the connection, or the "
                "host was reinstalled. Nothing was sent to the host.",
                ["Check with the host's provider that it was reinstalled and compare the new fingerprint.",
                 f"Then remove the old key: `ssh-keygen -f {where} -R '{_host_id(target)}'`, and trust the new one."],
            ) from None
        except (paramiko.AuthenticationException, paramiko.SSHException) as e:
            self.client.close()
            no_key = "No authentication methods available" in str(e)
            if not isinstance(e, paramiko.AuthenticationException) and not no_key:
                raise BackendError(f"The SSH session with {target} failed ({type(e).__name__}: {e}).",
                                   ["Check that the host's sshd runs and accepts logins, then run this again.", *HOST_SETUP]) from None
            key = f"the key {target.identity}" if target.identity else "your keys (~/.ssh/config, the agent, ~/.ssh/id_*)"
            raise BackendError(
                f"No key to log in to {target} with: no --identity, no agent, no ~/.ssh/id_* key." if no_key else f"{target} refused {key} ({e}).",
                ["Pass --identity with the private key whose public half is in the host's ~/.ssh/authorized_keys,",
                 f"or authorize yours: `ssh-copy-id -p {target.port} {target.user}@{target.host}`.", *HOST_SETUP],
            ) from None
        except (OSError, socket.timeout) as e:
            self.client.close()
            raise BackendError(
                f"Cannot reach {target} over SSH ({type(e).__name__}: {e}).",
                ["Check the host name and port, and that the host is up and its sshd runs (rented pods: is it started?).",
                 "Check that no firewall blocks the port from here.", *HOST_SETUP],
            ) from None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _channel(self, command: str, pty: bool = False):
        channel = self.client.get_transport().open_session()
        if pty:
            channel.get_pty(width=200)
        channel.exec_command(command)
        return channel

    def _collect(self, channel, timeout: float) -> tuple[int, str]:
        channel.settimeout(timeout)
        out = io.BytesIO()
        while True:
            data = channel.recv(65536)
            if not data:
                break
            out.write(data)
        code = channel.recv_exit_status()
        channel.close()
        return code, out.getvalue().decode(errors="replace")

    def script(self, text: str, timeout: float = 3600) -> tuple[int, str]:
        """Run `text` with bash on the host (sent through stdin, never on a command line): (exit code, output)."""
        channel = self._channel("bash -s")
        channel.set_combine_stderr(True)
        channel.sendall(text.encode())
        channel.shutdown_write()
        return self._collect(channel, timeout)

    def upload(self, files: dict[str, Path], remote_dir: str, timeout: float = 3600) -> None:
        """Copy local files and folders into `remote_dir` on the host (one tar stream, unpacked there)."""
        channel = self._channel(f"mkdir -p {q(remote_dir)} && tar -xf - -C {q(remote_dir)}")
        channel.set_combine_stderr(True)
        for chunk in tar_stream(files):
            channel.sendall(chunk)
        channel.shutdown_write()
        code, out = self._collect(channel, timeout)
        if code:
            raise BackendError(f"Uploading to {self.target}:{remote_dir} failed (tar exit {code}): {out.strip()[-500:]}",
                               ["Check the free disk in the home folder on the host (`df -h ~`), then run this again."])

    def stream(self, command: str) -> Iterator[str]:
        """Lines of a long command's output as they come. It runs on a pty, so closing the connection (Ctrl-C,
        a closed laptop) hangs it up on the host instead of leaving it running."""
        channel = self._channel("stty -onlcr 2>/dev/null; " + command, pty=True)
        pending = b""
        try:
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace").rstrip("\r") + "\n"
            if pending:
                yield pending.decode(errors="replace")
        finally:
            channel.close()


def tar_stream(files: dict[str, Path], chunk: int = 1 << 20) -> Iterator[bytes]:
    """A tar of `files` (name in the archive -> local file or folder), made while it is sent. Not compressed:
    most bytes are wheels, which are zip files already."""
    import threading

    read_fd, write_fd = os.pipe()
    failed: list[BaseException] = []

    def write():
        try:
            with os.fdopen(write_fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
                for name, path in files.items():
                    tar.add(str(path), arcname=name, filter=_skip_junk)
        except BaseException as e:  # noqa: BLE001 - handed to the reading side, which raises it
            failed.append(e)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as source:
        while True:
            data = source.read(chunk)
            if not data:
                break
            yield data
    thread.join()
    if failed:
        raise BackendError(f"Packing {', '.join(map(str, files.values()))} for the upload failed: {failed[0]}",
                           ["Check that the files are readable here, then run this again."])


def _skip_junk(info: tarfile.TarInfo):
    parts = Path(info.name).parts
    if "__pycache__" in parts or any(p.endswith(".egg-info") for p in parts) or info.name.endswith(".pyc"):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def q(value: str) -> str:
    """Shell-quote for a script sent to bash (values stay out of command lines: scripts go through stdin)."""
    return shlex.quote(str(value))
