"""Storage: one fsspec URL holding everything a run needs and makes.

`open_storage` turns a URL (a plain path, file://, s3://bucket/prefix, memory://) into a `Storage` rooted at it,
and proves before any money is spent that it can list and write there: malformed URLs, missing or wrong
credentials, unknown buckets and unreachable endpoints each become a `StorageError` that says what to do.
S3 settings come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION) or from `--storage-option key=value`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import uuid
from dataclasses import dataclass

from .errors import StorageError

SUPPORTED = ("a local path", "file://PATH", "s3://BUCKET/PREFIX", "modal://VOLUME/PATH", "memory://PATH")
# Registered by name and imported only when used, as fsspec does with its own protocols.
MODAL_FS = "runner.modal_fs.ModalVolumeFileSystem"
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# S3 options that people type as top-level keys but s3fs expects inside client_kwargs / config_kwargs.
CLIENT_KWARGS = {"endpoint_url", "region_name"}
RUNNER_DIR = "_runner"


@dataclass
class Storage:
    """A filesystem and the root path inside it; every runner path is relative to `root`."""

    fs: object
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, rel: str = "") -> str:
        rel = rel.strip("/")
        return posixpath.join(self.root, rel) if rel else self.root

    def url_of(self, rel: str) -> str:
        return self.url.rstrip("/") + "/" + rel.strip("/")

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_text(self, rel: str) -> str:
        with self.fs.open(self.path(rel), "rb") as f:
            return f.read().decode()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file whole; on object stores a PUT is atomic, locally we write then rename."""
        target = self.path(rel)
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            return
        self.fs.pipe_file(target, data)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def find(self, rel: str) -> dict[str, tuple[int, str]]:
        """{path relative to `rel`: (size, version tag)} for every file under `rel` ("" for `rel` itself).

        The tag (ETag on S3, mtime locally) changes when an object is rewritten, even at the same size.
        """
        base = self.path(rel).rstrip("/")
        self.invalidate(base)  # another process (or thread) may have written here: never trust a cached listing
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for full, info in found.items():
            if info.get("type") == "directory":
                continue
            full = full.rstrip("/")
            relative = "" if full == base else posixpath.relpath(full, base)
            out[relative] = (int(info.get("size") or 0), object_tag(info))
        return out

    def invalidate(self, path: str | None = None) -> None:
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(path)


def object_tag(info: dict) -> str:
    """What changes when an object is rewritten: the ETag on S3, the mtime on a local disk."""
    value = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("created") or ""
    if hasattr(value, "timestamp"):  # some filesystems give a datetime from info() but a float from find()
        value = value.timestamp()
    return str(value)


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


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


def _s3_options(options: dict) -> dict:
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
    # Fail fast on a dead endpoint instead of retrying for minutes; transfers set their own retries.
    config = dict(options.pop("config_kwargs", {}) or {})
    config.setdefault("connect_timeout", 10)
    config.setdefault("read_timeout", 120)
    config.setdefault("retries", {"max_attempts": 4, "mode": "standard"})
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


def open_storage(url: str, option_pairs: list[str] | tuple[str, ...] = (), check: bool = True) -> Storage:
    """Open the storage at `url` and, with `check`, prove it can be listed and written to."""
    import fsspec

    protocol, path = split_url(url)
    options = parse_options(list(option_pairs))
    if protocol == "s3":
        options = _s3_options(options)
    if protocol == "modal":
        _register_modal()
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as e:
        raise StorageError(f"The {protocol}:// filesystem is not installed ({e}).", ["pip install s3fs (it comes with nanochat-runner)."])
    except TypeError as e:
        raise StorageError(f"A --storage-option is not understood by the {protocol} filesystem: {e}.", ["Check the option names against the fsspec/s3fs docs."])
    if protocol == "file" and check:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise StorageError(f"Cannot use {path} as the storage folder ({e.strerror or e}).",
                               ["Point --storage at a folder you can write to (a file of that name is in the way, or permissions are missing)."]) from None
    storage = Storage(fs=fs, root=path, url=url if "://" in url else path)
    if check:
        check_access(storage)
    return storage


def _register_modal() -> None:
    import fsspec

    from .modal_fs import sdk_problem

    problem = sdk_problem()  # no SDK or no token: say so before anything tries the network
    if problem:
        raise StorageError(f"modal:// storage: {problem[0]}", problem[1])
    fsspec.register_implementation("modal", MODAL_FS, clobber=True)


@contextlib.contextmanager
def reading(url: str):
    """For laptop-side commands (ls, report, chat, sync): a storage failure becomes a StorageError with a fix."""
    from .errors import RunnerError

    try:
        yield
    except RunnerError:
        raise
    except (OSError, ConnectionError, TimeoutError) as e:
        raise explain_storage_error(url, e) from None
    except Exception as e:  # noqa: BLE001 - botocore/aiohttp errors have no common base we can import cheaply
        if type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "modal", "grpclib"):
            raise explain_storage_error(url, e) from None
        raise


def check_access(storage: Storage) -> None:
    """List the root and write, read back and delete a probe file under _runner/."""
    probe = f"{RUNNER_DIR}/.probe-{uuid.uuid4().hex[:12]}"
    try:
        if storage.url.startswith(("s3://", "s3a://")):
            # Some S3 servers create a missing bucket on the first PUT; ask for it explicitly first.
            storage.fs.info(storage.root.split("/", 1)[0])
        storage.write_text(probe, "ok")
        if storage.read_text(probe) != "ok":
            raise StorageError(f"A probe written to {storage.url} read back differently.", ["Check the storage for a proxy or a misconfigured gateway."])
        storage.remove(probe)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure here is translated into a fixable message
        raise explain_storage_error(storage.url, e) from None


def explain_storage_error(url: str, error: Exception) -> StorageError:
    """Turn an s3fs/botocore/OS exception into a StorageError that says how to fix it."""
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or (
        isinstance(error, FileNotFoundError) and url.startswith("s3")
    ):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return StorageError(f"The bucket of {url} does not exist ({text}).", [f"Create it first, e.g. `aws s3 mb s3://{bucket}` (add --endpoint-url for a non-AWS server)."])
    if any(k in lowered for k in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden", "permissionerror", "403")):
        return StorageError(
            f"The storage at {url} refused the credentials ({text}).",
            ["Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --storage-option key=... secret=...).", "Make sure the key may list, read and write under that prefix."],
        )
    if any(k in lowered for k in ("nocredentials", "unable to locate credentials", "credentials")):
        return StorageError(f"No credentials were found for {url} ({text}).", ["Export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --storage-option key=... secret=...."])
    if any(k in lowered for k in ("connect", "endpoint", "timed out", "timeout", "name or service", "refused", "unreachable")):
        return StorageError(
            f"Cannot reach the storage at {url} ({text}).",
            ["Check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=...) and that the server is up.", "Check the network path from this machine to it."],
        )
    if isinstance(error, (PermissionError, OSError)) and not url.startswith("s3"):
        return StorageError(f"Cannot write to {url} ({text}).", ["Use a directory you can write to, or fix its permissions.", "If the disk is full, free space or point --storage elsewhere."])
    return StorageError(f"The storage at {url} failed a write/read check ({text}).", ["Check the URL, the credentials and the server's logs."])
