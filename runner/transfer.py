"""Moving files between storage and local scratch: in parallel, verified, and only what changed.

`pull` and `push` copy the files under one storage path. A file is copied when the other side lacks it or when
it changed since the last copy (a small state file in scratch remembers size and mtime of what was copied, so
a retrained tokenizer of the same size is still pushed). Every copy is checked for its size on arrival and
lands whole: a download, or an upload to a local storage, is written in a landing folder of its own and moved
to its name when whole (storage_copy.py); to S3 it is one PUT. Transient failures are retried within one budget of silence
(storage_wait.py), permanent ones (full disk, permission refused) end the batch at once with their fix, and
Ctrl-C stops the batch within seconds, removing partial files (transfer_pool.py). Errors are never swallowed.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TransferError
from .storage import Storage, explain_storage_error, object_tag
from .storage_copy import TEMP_RE, landing
from .storage_wait import Watch
from .transfer_pool import run_batch

DEFAULT_WORKERS = 8
STATE_FILE = ".runner-sync-state.json"


@dataclass
class TransferStats:
    files: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class SyncState:
    """Remembers, per local file, its (size, mtime_ns) and the storage object's tag when last copied."""

    def __init__(self, scratch: Path):
        self.path = scratch / STATE_FILE
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.entries = {}

    def in_sync(self, local: Path, remote_tag: str | None = None) -> bool:
        """True when `local` is unchanged since its last copy (and the remote object too, if a tag is given)."""
        try:
            st = local.stat()
        except FileNotFoundError:
            return False
        entry = self.entries.get(str(local))
        if not entry or entry[:2] != [st.st_size, st.st_mtime_ns]:
            return False
        return remote_tag is None or entry[2] == remote_tag

    def record(self, local: Path, remote_tag: str) -> None:
        st = local.stat()
        with self.lock:
            self.entries[str(local)] = [st.st_size, st.st_mtime_ns, remote_tag]

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(self.entries))
                os.replace(tmp, self.path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                e.filename = e.filename or str(self.path)  # a full scratch disk is named as such, not as the storage
                raise


class Progress:
    """A progress line for a batch of transfers: a live bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total_files: int, total_bytes: int, log=print, interval: float = 5.0):
        self.label, self.total_files, self.total_bytes = label, total_files, total_bytes
        self.log, self.interval = log, interval
        self.done_files = self.done_bytes = 0
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()
        self.bar = None
        if os.isatty(1) and total_files > 1:
            from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TransferSpeedColumn

            self.bar = RichProgress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done_files += 1
            self.done_bytes += nbytes
            if self.bar is not None:
                self.bar.update(self.task, advance=nbytes)
            elif time.monotonic() - self.last >= self.interval:
                self.last = time.monotonic()
                self.log(self._line())

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (f"{self.label}: {self.done_files}/{self.total_files} files, "
                f"{self.done_bytes / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB, {self.done_bytes / 1e6 / elapsed:,.1f} MB/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        # A summary line for transfers worth mentioning; a few small files are not.
        if self.done_bytes >= 50e6 or time.monotonic() - self.start >= 2:
            self.log(self._line())


def _copy_batch(verb: str, storage: Storage, rel: str, todo: list[tuple], copy_one, workers: int, state: SyncState,
                log) -> TransferStats:
    """Run copy_one(watch, *item) for each `todo` item, a (size, ...) tuple, on worker threads: one progress line,
    one storage watch, the sync state saved whatever happens. The first failure is raised as a RunnerError that
    says the fix; Ctrl-C as it is."""
    total = sum(item[0] for item in todo)
    progress = Progress(f"{verb} {rel}", len(todo), total, log)
    watch = Watch(f"{verb} {storage.url_of(rel)}", storage.url, log)
    start = time.monotonic()

    def job(item: tuple) -> None:
        copy_one(watch, *item)
        progress.advance(item[0])

    try:
        run_batch([lambda item=item: job(item) for item in todo], workers, watch,
                  detail=lambda: f" ({progress.total_files - progress.done_files} file(s) left)")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        raise explain_storage_error(storage.url, e) from None
    finally:
        progress.close()
        state.save()
    return TransferStats(files=len(todo), bytes=total, seconds=time.monotonic() - start)


def _check_disk(local_dir: Path, need_bytes: int) -> None:
    probe = local_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes > free:
        raise TransferError(
            f"Scratch disk {probe} has {free / 1e9:,.1f} GB free but {need_bytes / 1e9:,.1f} GB must be staged.",
            ["Free space on that disk, or point --scratch (RUNNER_SCRATCH) at a larger local disk."],
        )


def pull(storage: Storage, rel: str, local: Path, state: SyncState, workers: int = DEFAULT_WORKERS, log=print,
         only: set[str] | None = None) -> TransferStats:
    """Copy storage:`rel` (a file or a directory) to `local`, skipping files already here unchanged.

    `only` limits the copy to those relative paths (the shards a plan uses, not every shard in the bucket).
    """
    remote = storage.find(rel)
    if only is not None:
        remote = {sub: info for sub, info in remote.items() if sub in only}
    todo = []
    for sub, (size, tag) in remote.items():
        target = local / sub if sub else local
        if state.in_sync(target, tag) and target.stat().st_size == size:
            continue
        todo.append((size, sub, target, tag))
    if todo:
        _check_disk(local, sum(item[0] for item in todo))

    def fetch(watch: Watch, size: int, sub: str, target: Path, tag: str) -> None:
        source = storage.path(posixpath.join(rel, sub) if sub else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with landing(target) as part:  # removed however this ends, even if the batch abandons this copy
            try:
                watch.retrying(lambda: storage.get_file(source, part, watch))
                got = os.stat(part).st_size
            except OSError as e:
                e.filename = e.filename or part  # a full scratch disk is named as such, not as the storage
                raise
            if got != size:
                raise TransferError(f"{source} arrived with {got} bytes, storage says {size}.", ["Run again; if it repeats, check the storage server."])
            os.replace(part, target)  # only a whole file takes the real name: a torn one never replaces a good one
        state.record(target, tag)

    stats = _copy_batch("pull", storage, rel, todo, fetch, workers, state, log) if todo else TransferStats()
    stats.skipped = len(remote) - len(todo)
    return stats


def _temporary(path: Path) -> bool:
    """A file still being written (a landing folder's, or another tool's `.part`/`.tmp`): never pushed."""
    return bool(TEMP_RE.search(path.as_posix())) or path.name.endswith((".part", ".tmp"))


def push(storage: Storage, local: Path, rel: str, state: SyncState, workers: int = DEFAULT_WORKERS, log=print) -> TransferStats:
    """Copy `local` (a file or a directory) to storage:`rel`: new files and files changed since the last copy."""
    if not local.exists():
        return TransferStats()
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and not _temporary(p))
    remote = storage.find(rel)
    todo = []
    for path in files:
        sub = "" if path == local else path.relative_to(local).as_posix()
        if sub in remote and remote[sub][0] == path.stat().st_size and state.in_sync(path, remote[sub][1]):
            continue
        todo.append((path.stat().st_size, path, sub))

    def send(watch: Watch, _listed_size: int, path: Path, sub: str) -> None:
        target = storage.path(posixpath.join(rel, sub) if sub else rel)
        size = path.stat().st_size  # now, not when listed: a log may have grown since
        watch.retrying(lambda: storage.put_file(str(path), target, watch))
        info = watch.retrying(lambda: storage.fs.info(target))
        if info.get("size") != size:
            raise TransferError(f"{target} landed with {info.get('size')} bytes, the local file has {size}.", ["Run again; if it repeats, check the storage server."])
        state.record(path, object_tag(info))

    try:
        stats = _copy_batch("push", storage, rel, todo, send, workers, state, log) if todo else TransferStats()
    finally:
        storage.invalidate()
    stats.skipped = len(files) - len(todo)
    return stats
