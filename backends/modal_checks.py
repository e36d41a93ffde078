"""What the Modal backend checks and gathers on the laptop before a run: the node's variables (from this shell or a
`.env` file, only those the node needs), and whether an S3 endpoint can be reached from Modal's machines at all.

`.env` is read here with a small parser (no python-dotenv): the compose `.env` next to compose.yaml holds
settings for the local containers (storage folder, uid, sizes) that must never reach Modal; only the variables
the node needs (W&B, HuggingFace, the preseed knobs, and for s3:// storage the AWS_* credentials) are taken, and
a variable set in this shell wins over the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .base import FORWARDED_ENV, S3_ENV, BackendError, RunSpec

DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_dotenv(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines of a `.env` file (comments, `export`, quotes handled as docker compose does for the simple
    cases); a missing file is empty."""
    path = Path(path)
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        match = DOTENV_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)  # an unquoted value ends at a comment
        values[key] = value
    return values


def node_variable_names(storage: str) -> tuple[str, ...]:
    return FORWARDED_ENV + (S3_ENV if storage.startswith(("s3://", "s3a://")) else ())


def node_env(spec: RunSpec, dotenv: str | Path = ".env") -> dict[str, str]:
    """The node's variables: the names it needs, from this shell or else `dotenv`; then -e/--env."""
    from_file = read_dotenv(dotenv)
    env = {}
    for name in node_variable_names(spec.storage):
        value = os.environ.get(name) or from_file.get(name)
        if value:
            env[name] = value
    env.update(spec.env)
    return env


def s3_endpoint(spec: RunSpec, env: dict[str, str]) -> str | None:
    """The S3 endpoint the node would use: --storage-option endpoint_url=..., else AWS_ENDPOINT_URL(_S3)."""
    for pair in spec.storage_options:
        key, _, value = pair.partition("=")
        if key.strip() == "endpoint_url":
            return value.strip()
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")


def _unreachable_address(host: str) -> str | None:
    """Why `host` (an address) cannot be reached from Modal, or None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return "a loopback address (this machine only)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private network address"
    return None


def check_s3_endpoint(endpoint: str | None, resolve: bool = False) -> None:
    """Refuse an S3 endpoint on loopback or a private network: Modal's machines cannot reach it, and a check from
    this laptop would pass. With `resolve`, host names are looked up too (preflight; never in the dry run)."""
    if not endpoint:
        return
    host = urlparse(endpoint).hostname or ""
    reasons = [_unreachable_address(host)]
    if host == "localhost" or host.endswith(".localhost"):
        reasons.append("a loopback address (this machine only)")
    elif resolve and reasons[0] is None:
        try:
            reasons += [_unreachable_address(info[4][0]) for info in socket.getaddrinfo(host, None)]
        except OSError:
            pass  # the node's own storage check says what is wrong with a name that does not resolve
    reason = next((r for r in reasons if r), None)
    if reason:
        raise BackendError(
            f"The S3 endpoint {endpoint} is {reason}: Modal's machines cannot reach it.",
            ["Use an S3 endpoint reachable from the internet (AWS S3, R2, a public MinIO), or",
             "keep the run's storage on a Modal Volume: --storage modal://VOLUME/PREFIX, or",
             "run where the endpoint is reachable: --backend local or --backend ssh."],
        )
