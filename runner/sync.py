"""`runner sync SRC DST`: copy a run's storage between any two URLs, incrementally and loudly.

A file is copied when DST lacks it or when it differs: by size, then by content checksum (MD5 for local files,
the ETag for S3 objects, including multipart ETags recomputed from the local file). Copies run in parallel, land
whole (a temporary name renamed locally; an S3 upload discarded unless complete), and are checked for size on
arrival. Any failure is raised after the others finish, naming the files: unlike `fsspec.generic.rsync`, nothing
is swallowed, and nothing is deleted unless `delete=True`. Ctrl-C or SIGTERM stops the copies within seconds
(transfer_pool.py) and removes their partial files; the next sync skips what already arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import threading
import time
from dataclasses import dataclass, field

from .errors import TransferError
from .storage import Storage
from .storage_copy import copy_stream, write_local_atomically
from .storage_wait import Watch
from .transfer import Progress
from .transfer_pool import run_batch

MIB = 1024 * 1024
COMMON_PART_SIZES = (5 * MIB, 8 * MIB, 16 * MIB, 50 * MIB, 64 * MIB, 100 * MIB)
IGNORED = (".part", ".tmp")


@dataclass
class SyncResult:
    copied: list[str] = field(default_factory=list)
    identical: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


def _is_s3(storage: Storage) -> bool:
    return "s3" in (storage.fs.protocol if isinstance(storage.fs.protocol, tuple) else (storage.fs.protocol,))


def _md5_parts(storage: Storage, rel: str, part_size: int | None, watch: Watch | None = None) -> str:
    """MD5 of the content, or the S3 multipart ETag form (md5 of part md5s, "-N") for a part size."""
    whole, parts = hashlib.md5(), []
    current, filled = hashlib.md5(), 0
    with storage.fs.open(storage.path(rel), "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            if watch is not None:
                watch.check()
                watch.touch()
            whole.update(block)
            if part_size:
                current.update(block)
                filled += len(block)
                if filled >= part_size:
                    parts.append(current.digest())
                    current, filled = hashlib.md5(), 0
    if not part_size:
        return whole.hexdigest()
    if filled:
        parts.append(current.digest())
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def _etag(storage: Storage, rel: str) -> str | None:
    info = storage.fs.info(storage.path(rel))
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


def _matches(storage: Storage, rel: str, tag: str, size: int, watch: Watch | None = None) -> bool:
    """Does the content of storage:rel have this S3 ETag (a plain MD5, or a multipart "md5-N")?"""
    if "-" not in tag:
        return _md5_parts(storage, rel, None, watch) == tag
    count = int(tag.rsplit("-", 1)[1])
    derived = -(-size // count)  # the part size if the parts are equal, rounded up to whole MiB below
    candidates = {-(-derived // MIB) * MIB, *COMMON_PART_SIZES}
    return any(-(-size // p) == count and _md5_parts(storage, rel, p, watch) == tag for p in sorted(candidates))


def same_content(src: Storage, dst: Storage, rel: str, size: int, watch: Watch | None = None) -> bool:
    """Equal sizes are not enough (a retrained tokenizer keeps its size): compare checksums.

    An S3 side offers its ETag; the other side is hashed to match it. Two local sides are both hashed.
    """
    src_tag = _etag(src, rel) if _is_s3(src) else None
    dst_tag = _etag(dst, rel) if _is_s3(dst) else None
    if src_tag and src_tag == dst_tag:
        return True
    if dst_tag:
        return _matches(src, rel, dst_tag, size, watch)
    if src_tag:
        return _matches(dst, rel, src_tag, size, watch)
    return _md5_parts(src, rel, None, watch) == _md5_parts(dst, rel, None, watch)


def _copy(src: Storage, dst: Storage, rel: str, size: int, watch: Watch) -> None:
    """Copy one file in chunks; a copy that stops half way (failure, Ctrl-C) leaves nothing under the real name."""
    target = dst.path(rel)
    dst.fs.makedirs(posixpath.dirname(target), exist_ok=True)
    with src.fs.open(src.path(rel), "rb") as reader:
        if dst.is_local:
            write_local_atomically(target, lambda writer: copy_stream(reader, writer, watch))
        else:
            _upload(reader, dst, target, watch)
    dst.fs.invalidate_cache(target) if hasattr(dst.fs, "invalidate_cache") else None
    landed = dst.fs.info(target)["size"]
    if landed != size:
        raise TransferError(f"{dst.url_of(rel)} landed with {landed} bytes, the source has {size}.", ["Run the sync again."])


def _upload(reader, dst: Storage, target: str, watch: Watch) -> None:
    """Stream into an object store; a copy that stops half way uploads nothing."""
    writer = dst.fs.open(target, "wb")
    try:
        copy_stream(reader, writer, watch)
    except BaseException:
        # A buffered S3 writer would upload what it holds on close: discard it instead.
        with contextlib.suppress(Exception):
            if hasattr(writer, "discard"):
                writer.discard()
                writer.closed = True  # or its finalizer would upload the half it holds
            else:
                writer.close()
        raise
    writer.close()


def sync(src: Storage, dst: Storage, delete: bool = False, dry_run: bool = False, workers: int = 8, log=print) -> SyncResult:
    result = SyncResult()
    src_files = {k: v[0] for k, v in src.find("").items() if not k.endswith(IGNORED) and "/.probe-" not in k}
    dst_files = {k: v[0] for k, v in dst.find("").items()}
    started = time.monotonic()

    compare = Watch(f"comparing {src.url} with {dst.url}", dst.url, log)
    decisions: dict[str, bool] = {}

    def decide(rel: str) -> None:
        decisions[rel] = rel not in dst_files or dst_files[rel] != src_files[rel] or not same_content(src, dst, rel, src_files[rel], compare)

    run_batch([lambda rel=rel: decide(rel) for rel in src_files], workers, compare)
    todo = sorted(rel for rel, copy in decisions.items() if copy)
    result.identical = len(src_files) - len(todo)
    stale = sorted(set(dst_files) - set(src_files)) if delete else []
    if dry_run:
        result.copied, result.deleted = todo, stale
        return result
    progress = Progress(f"sync {src.url} -> {dst.url}", len(todo), sum(src_files[r] for r in todo), log)
    failures: dict[str, str] = {}
    lock = threading.Lock()
    watch = Watch(f"sync {src.url} -> {dst.url}", dst.url, log)

    def copy(rel: str) -> None:
        try:
            _copy(src, dst, rel, src_files[rel], watch)
        except Exception as e:  # noqa: BLE001 - collected and raised below, after the other copies
            with lock:
                failures[rel] = f"{type(e).__name__}: {e}"
            return
        with lock:
            result.copied.append(rel)
            result.bytes += src_files[rel]
        progress.advance(src_files[rel])

    try:
        run_batch([lambda rel=rel: copy(rel) for rel in todo], workers, watch,
                  detail=lambda: f" ({len(todo) - len(result.copied) - len(failures)} file(s) left)")
    finally:
        progress.close()
    if failures:
        listed = "\n  ".join(f"{rel}: {why}" for rel, why in sorted(failures.items())[:20])
        raise TransferError(
            f"{len(failures)} of {len(todo)} files failed to copy to {dst.url}:\n  {listed}",
            ["Check the destination's credentials and free space.", "Run the same sync again: what already arrived is skipped."],
        )
    for rel in stale:
        dst.fs.rm(dst.path(rel))
        result.deleted.append(rel)
    result.copied.sort()
    result.seconds = time.monotonic() - started
    return result
