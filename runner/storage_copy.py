"""How bytes land in local files: whole or not at all, and stoppable between chunks.

A file is written in a landing folder of its own beside its target (`NAME.<8 hex>.part/NAME`), flushed and moved
to NAME; a full disk, a permission error or a Ctrl-C removes the folder, so no torn file ever carries the real
name (a later run would take it for whole). Copies go in chunks so that a stop request (storage_wait.Watch) ends
them within a chunk, and each chunk counts as progress for the not-answering watch.

A copy stuck inside one network call when its batch stops is abandoned (transfer_pool.py), and the process may
exit while it is still running: the batch removes the landing folders of its copies (`remove_landings`). The file
itself is often created by another thread than ours (s3fs opens it from its event loop once the GET answers), so
the folder is what makes the removal final: a file cannot be created in a folder that is gone, and a stopped
batch's copies are refused a new folder (creating and removing take one lock). What a process that died (kill -9,
a lost node) left is removed by the next write of the same file, once untouched for an hour.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import threading
import time
import uuid

from .storage_errors import TransferCancelled
from .storage_wait import Watch

CHUNK = 8 * 1024 * 1024
# A file being written locally, and the leftovers of older versions (`NAME.<8 hex>.part` files).
TEMP_RE = re.compile(r"\.[0-9a-f]{8}\.part(/|$)")
REMOVE_TRIES = 5  # a writer may create its file between rmtree's listing and its rmdir: list again
# A landing untouched this long was left by a process that died (kill -9, a lost node): no live writer is silent
# for more than the storage budget (minutes), so the next write of the same file removes it.
STALE_LANDING_SEC = 3600

_LANDINGS: dict[int | None, set[str]] = {}  # id of a batch's Watch (None outside a batch) -> its landing folders
_LANDINGS_LOCK = threading.Lock()
_BATCH = threading.local()  # .watch: the batch this thread copies for (set by transfer_pool's workers)


@contextlib.contextmanager
def copying_for(watch: Watch):
    """Mark the calling thread as a copy worker of `watch`'s batch while the block runs."""
    _BATCH.watch = watch
    try:
        yield
    finally:
        _BATCH.watch = None


@contextlib.contextmanager
def landing(target: str):
    """A path to write `target`'s bytes to; the caller moves it to `target` (os.replace) once whole.

    The path lies in a folder of its own, removed when the block ends however it ends. Inside a batch that has been
    stopped no folder is made (TransferCancelled): the stop has already removed the batch's folders.
    """
    target = str(target)
    _remove_stale_landings(target)
    folder = f"{target}.{uuid.uuid4().hex[:8]}.part"
    watch: Watch | None = getattr(_BATCH, "watch", None)
    key = id(watch) if watch is not None else None
    with _LANDINGS_LOCK:
        if watch is not None and watch.cancel.is_set():
            raise TransferCancelled(watch.what)
        os.makedirs(folder)
        _LANDINGS.setdefault(key, set()).add(folder)
    try:
        yield posixpath.join(folder, posixpath.basename(target))
    finally:
        with _LANDINGS_LOCK:
            _LANDINGS.get(key, set()).discard(folder)
            if not _LANDINGS.get(key, True):
                del _LANDINGS[key]
        _remove_folder(folder)


def remove_landings(watch: Watch) -> list[str]:
    """Remove the landing folders that `watch`'s (stopped, maybe abandoned) copies still hold; returns them."""
    with _LANDINGS_LOCK:
        folders = sorted(_LANDINGS.pop(id(watch), ()))
        for folder in folders:
            _remove_folder(folder)
    return folders


def _remove_stale_landings(target: str) -> None:
    """Remove what dead writers of `target` left beside it (their landing folders, or older `.part` files)."""
    folder, name = posixpath.split(target)
    now = time.time()
    try:
        entries = [e for e in os.scandir(folder or ".") if e.name.startswith(f"{name}.") and TEMP_RE.search(e.name)
                   and len(e.name) == len(name) + len(".12345678.part")]
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if now - _last_touched(entry.path) > STALE_LANDING_SEC:
                _remove_folder(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def _last_touched(path: str) -> float:
    """The newest mtime of a landing folder and what it holds (a live writer keeps its file's mtime fresh)."""
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path):
        for entry in os.scandir(path):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove_folder(folder: str) -> None:
    for _ in range(REMOVE_TRIES):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            return


def copy_stream(reader, writer, watch: Watch | None = None) -> int:
    """Copy in chunks; between chunks note progress and stop when the batch is stopped."""
    copied = 0
    while True:
        if watch is not None:
            watch.check()
        block = reader.read(CHUNK)
        if not block:
            return copied
        writer.write(block)
        copied += len(block)
        if watch is not None:
            watch.touch()


def write_local_atomically(target: str, fill) -> None:
    """Create `target` whole or not at all: `fill(file)` writes a file in a landing folder, which is flushed to
    disk and moved to `target`; on any failure (ENOSPC, Ctrl-C) the landing folder is removed."""
    os.makedirs(posixpath.dirname(target) or ".", exist_ok=True)
    try:
        with landing(target) as path:
            with open(path, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path, target)
    except OSError as e:
        e.filename = e.filename or target  # a failed write() names no file: say which one
        raise


def watch_callback(watch: Watch):
    """An fsspec callback that feeds a Watch: progress resets its wait, a stop request ends the copy."""
    from fsspec.callbacks import Callback

    class WatchCallback(Callback):
        def call(self, *args, **kwargs):
            watch.touch()
            watch.check()

    return WatchCallback()
