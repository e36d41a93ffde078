"""Storage URLs and their options: which filesystem a URL names, and the s3fs settings that keep S3 calls bounded.

A hanging S3 endpoint must not hold a run for half an hour: botocore's retries times s3fs's retries times the
runner's own would multiply. Here botocore gets short connect/read timeouts and two attempts, s3fs one more, and
the runner's single budget for a whole call (`storage_budget_sec`, RUNNER_STORAGE_TIMEOUT_SEC) decides when to
give up (see storage_wait.py).
"""

from __future__ import annotations

import os
import re

from .errors import StorageError

SUPPORTED = ("a local path", "file://PATH", "s3://BUCKET/PREFIX", "modal://VOLUME/PATH", "memory://PATH")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# S3 options that people type as top-level keys but s3fs expects inside client_kwargs / config_kwargs.
CLIENT_KWARGS = {"endpoint_url", "region_name"}
BUDGET_ENV = "RUNNER_STORAGE_TIMEOUT_SEC"
DEFAULT_BUDGET_SEC = 100.0  # under the 2 minutes a user should wait for a clear error
S3FS_RETRIES = 2  # s3fs's own retry loop, around botocore's


def storage_budget_sec() -> float:
    """Seconds a storage call may go without any answer (or keep failing transiently) before it is given up."""
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_BUDGET_SEC
    except ValueError:
        raise StorageError(f"{BUDGET_ENV}={raw!r} is not a number of seconds.", [f"Set {BUDGET_ENV} to e.g. 100, or unset it."]) from None
    if value <= 0:
        raise StorageError(f"{BUDGET_ENV}={raw!r} must be positive.", [f"Set {BUDGET_ENV} to e.g. 100, or unset it."])
    return value


def parse_options(pairs: list[str]) -> dict:
    """`key=value` strings into fsspec options; S3 endpoint/region go where s3fs wants them."""
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StorageError(f"--storage-option {pair!r} is not KEY=VALUE.", ["Write it as e.g. --storage-option endpoint_url=http://127.0.0.1:8333."])
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            options[key] = value
    return options


def s3_options(options: dict) -> dict:
    options = dict(options)
    client = dict(options.pop("client_kwargs", {}) or {})
    for key in CLIENT_KWARGS:
        if key in options:
            client[key] = options.pop(key)
    if "region" in options:
        client["region_name"] = options.pop("region")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in client:
        client["endpoint_url"] = endpoint
    if "endpoint_url" in client and not re.match(r"^https?://[^/\s]+", str(client["endpoint_url"])):
        raise StorageError(f"S3 endpoint {client['endpoint_url']!r} is not an http(s) URL.", ["Use a form like http://127.0.0.1:8333 or https://s3.example.com."])
    if os.environ.get("AWS_DEFAULT_REGION") and "region_name" not in client:
        client["region_name"] = os.environ["AWS_DEFAULT_REGION"]
    # One socket read may wait at most a third of the budget, so that botocore's two attempts end inside it;
    # the runner's watch (storage_wait.py) reports the wait and gives up at the budget whatever happens below.
    budget = storage_budget_sec()
    config = dict(options.pop("config_kwargs", {}) or {})
    config.setdefault("connect_timeout", max(1.0, min(10.0, budget / 6)))
    config.setdefault("read_timeout", max(1.0, min(60.0, budget / 3)))
    config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
    # Many files move at once (see transfer.py); splitting each into concurrent ranges only costs CPU.
    options.setdefault("max_concurrency", 1)
    options["client_kwargs"] = client
    options["config_kwargs"] = config
    return options


def split_url(url: str) -> tuple[str, str]:
    """(protocol, path) with validation; a plain path is protocol "file"."""
    if not url or not url.strip():
        raise StorageError("The storage URL is empty.", ["Pass --storage with a path or s3://bucket/prefix."])
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://(.*)$", url)
    if not match:
        if "://" in url or url.startswith("s3:"):
            raise StorageError(f"Storage URL {url!r} is malformed.", [f"Use one of: {', '.join(SUPPORTED)}."])
        return "file", os.path.abspath(os.path.expanduser(url))
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol == "file":
        return "file", os.path.abspath(rest or "/")
    if protocol in ("s3", "s3a"):
        bucket = rest.split("/", 1)[0]
        if not bucket or not BUCKET_RE.match(bucket) or ".." in bucket:
            raise StorageError(
                f"{url!r} does not name a valid S3 bucket ({bucket!r}).",
                ["Use s3://BUCKET/PREFIX with a bucket name of 3-63 lowercase letters, digits, dots or hyphens."],
            )
        return "s3", rest.rstrip("/")
    if protocol == "memory":
        return "memory", "/" + rest.strip("/")
    if protocol == "modal":
        volume = rest.split("/", 1)[0]
        if not re.match(r"^[a-zA-Z0-9._-]{1,63}$", volume):
            raise StorageError(f"{url!r} does not name a Modal Volume ({volume!r}).", ["Use modal://VOLUME/PREFIX with a volume name of letters, digits, '.', '-' or '_'."])
        return "modal", rest.strip("/")
    raise StorageError(f"Storage protocol {protocol!r} is not supported.", [f"Use one of: {', '.join(SUPPORTED)}."])
