"""Storage: one fsspec URL holding everything a run needs and makes.

`open_storage` turns a URL (a plain path, file://, s3://bucket/prefix, memory://) into a `Storage` rooted at it,
and proves before any money is spent that it can list and write there: malformed URLs, missing or wrong
credentials, unknown buckets, unreachable endpoints and unwritable folders each become a `StorageError` that
says what to do. S3 settings come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) or from `--storage-option key=value` (storage_url.py).

Every file lands whole: on a local disk it is written under a temporary name in the same folder and renamed
(a full disk or a Ctrl-C leaves no torn file under the real name); on an object store a PUT is atomic. Calls to a
remote store are watched (storage_wait.py): a silent server is reported every 15 s and given up at the budget.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass, field

from .errors import StorageError
from .storage_errors import StoragePermissionDenied, explain_storage_error  # noqa: F401 - re-exported
from .storage_url import S3FS_RETRIES, parse_options, s3_options, split_url
from .storage_copy import TEMP_RE, copy_stream, watch_callback, write_local_atomically
from .storage_wait import Watch, call_bounded, say_stderr

# Registered by name and imported only when used, as fsspec does with its own protocols.
MODAL_FS = "runner.modal_fs.ModalVolumeFileSystem"
RUNNER_DIR = "_runner"
# Folders of a local storage the runner writes into, checked for write access before a run.
WRITTEN_FOLDERS = (RUNNER_DIR, "base_data", "tokenizer", "report")
MAX_FOLDERS_CHECKED = 2000


@dataclass
class Storage:
    """A filesystem and the root path inside it; every runner path is relative to `root`."""

    fs: object
    root: str
    url: str
    log: object = field(default=say_stderr, repr=False)

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, rel: str = "") -> str:
        rel = rel.strip("/")
        return posixpath.join(self.root, rel) if rel else self.root

    def url_of(self, rel: str) -> str:
        return self.url.rstrip("/") + "/" + rel.strip("/")

    def bounded(self, fn, what: str):
        """A remote call waits out loud and at most the budget; a local one runs as it is."""
        if self.is_local or "memory" in _protocols(self.fs):
            return fn()
        return call_bounded(fn, what, self.url, self.log)

    def exists(self, rel: str) -> bool:
        return self.bounded(lambda: self.fs.exists(self.path(rel)), f"checking {self.url_of(rel)}")

    def info(self, rel: str) -> dict:
        return self.bounded(lambda: self.fs.info(self.path(rel)), f"reading the size of {self.url_of(rel)}")

    def read_text(self, rel: str) -> str:
        def read():
            with self.fs.open(self.path(rel), "rb") as f:
                return f.read().decode()

        return self.bounded(read, f"reading {self.url_of(rel)}")

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file whole; on object stores a PUT is atomic, locally we write then rename."""
        target = self.path(rel)
        if self.is_local:
            write_local_atomically(target, lambda f: f.write(data))
            return
        self.bounded(lambda: self.fs.pipe_file(target, data), f"writing {self.url_of(rel)}")

    def put_file(self, local: str, target: str, watch: Watch | None = None) -> None:
        """Copy a local file to the full storage path `target`, whole or not at all (see write_local_atomically)."""
        if self.is_local:
            with open(local, "rb") as reader:
                write_local_atomically(target, lambda f: copy_stream(reader, f, watch))
            return
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if watch is None:
            self.bounded(lambda: self.fs.put_file(local, target), f"uploading {target}")
        else:
            self.fs.put_file(local, target, callback=watch_callback(watch))

    def get_file(self, source: str, local: str, watch: Watch | None = None) -> None:
        """Copy the full storage path `source` into the local file `local` (the caller renames it when whole)."""
        if self.is_local:
            with open(source, "rb") as reader, open(local, "wb") as writer:
                copy_stream(reader, writer, watch)
            return
        self.fs.get_file(source, local, **({"callback": watch_callback(watch)} if watch is not None else {}))

    def remove(self, rel: str) -> None:
        def remove():
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel), recursive=True)

        self.bounded(remove, f"removing {self.url_of(rel)}")

    def find(self, rel: str) -> dict[str, tuple[int, str]]:
        """{path relative to `rel`: (size, version tag)} for every file under `rel` ("" for `rel` itself).

        The tag (ETag on S3, mtime locally) changes when an object is rewritten, even at the same size. Files
        still being written (temporary names) are not listed.
        """
        base = self.path(rel).rstrip("/")
        self.invalidate(base)  # another process (or thread) may have written here: never trust a cached listing

        def listing():
            try:
                return self.fs.find(base, detail=True)
            except FileNotFoundError:
                return {}

        out = {}
        for full, info in self.bounded(listing, f"listing {self.url_of(rel)}").items():
            if info.get("type") == "directory" or TEMP_RE.search(full):
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


def open_storage(url: str, option_pairs: list[str] | tuple[str, ...] = (), check: bool = True) -> Storage:
    """Open the storage at `url` and, with `check`, prove it can be listed and written to."""
    import fsspec

    protocol, path = split_url(url)
    options = parse_options(list(option_pairs))
    if protocol == "s3":
        options = s3_options(options)
    if protocol == "modal":
        _register_modal()
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ImportError as e:
        raise StorageError(f"The {protocol}:// filesystem is not installed ({e}).", ["pip install s3fs (it comes with nanochat-runner)."])
    except TypeError as e:
        raise StorageError(f"A --storage-option is not understood by the {protocol} filesystem: {e}.", ["Check the option names against the fsspec/s3fs docs."])
    if protocol == "s3":
        fs.retries = S3FS_RETRIES  # s3fs's own loop around botocore's; the runner's budget bounds the rest
    if protocol == "file" and check:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            explained = explain_storage_error(path, e)
            if isinstance(explained, StoragePermissionDenied):
                raise explained from None
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
    """List the root and write, read back and delete a probe file under _runner/; on a local disk also find the
    folders the runner writes into (checkpoints, shards, run records) that this user cannot write."""
    probe = f"{RUNNER_DIR}/.probe-{uuid.uuid4().hex[:12]}"
    try:
        if storage.url.startswith(("s3://", "s3a://")):
            # Some S3 servers create a missing bucket on the first PUT; ask for it explicitly first.
            bucket = storage.root.split("/", 1)[0]
            storage.bounded(lambda: storage.fs.info(bucket), f"looking up bucket {bucket}")
        storage.write_text(probe, "ok")
        if storage.read_text(probe) != "ok":
            raise StorageError(f"A probe written to {storage.url} read back differently.", ["Check the storage for a proxy or a misconfigured gateway."])
        storage.remove(probe)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure here is translated into a fixable message
        raise explain_storage_error(storage.url, e) from None
    if storage.is_local:
        blocked = unwritable_folders(storage.root)
        if blocked:
            listed = ", ".join(blocked[:5]) + (f" and {len(blocked) - 5} more" if len(blocked) > 5 else "")
            raise StoragePermissionDenied(
                f"The storage at {storage.url} has folders this user cannot write into: {listed}.",
                ["Give the user running the runner write access to them (chown/chmod), or remount read-write.",
                 "Or point --storage at a copy you can write to (`runner sync SRC DST`)."],
            )


def unwritable_folders(root: str) -> list[str]:
    """Folders under a local storage root that the runner writes into and this user may not (os.access: as
    root, only read-only mounts and immutable folders show)."""
    tops = [root] + [posixpath.join(root, name) for name in sorted(os.listdir(root))
                     if name in WRITTEN_FOLDERS or name.endswith("_checkpoints")]
    blocked, seen = [], 0
    for top in tops:
        walker = [(top, [], [])] if top == root else os.walk(top)
        for folder, _, _ in walker:
            seen += 1
            if seen > MAX_FOLDERS_CHECKED:
                return blocked
            if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
                blocked.append(folder)
    return blocked
