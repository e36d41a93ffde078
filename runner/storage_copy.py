"""How bytes land in storage: whole or not at all, and stoppable between chunks.

On a local disk a file is written under a temporary name in its own folder (`NAME.<8 hex>.part`), flushed and
renamed; a full disk, a permission error or a Ctrl-C removes the temporary file, so no torn file ever carries the
real name (a later run would take it for whole). Copies go in chunks so that a stop request (storage_wait.Watch)
ends them within a chunk, and each chunk counts as progress for the not-answering watch. A copy stuck inside one
network call when its batch stops is abandoned (transfer_pool.py); the temporary file it was writing is noted here
(`partial_file`), so the batch removes it before the process exits.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
import uuid

from .storage_wait import Watch

CHUNK = 8 * 1024 * 1024
# A file being written locally: `NAME.<8 hex>.part` in its own folder, renamed to NAME once whole.
TEMP_RE = re.compile(r"\.[0-9a-f]{8}\.part$")


def temp_name(target: str) -> str:
    return f"{target}.{uuid.uuid4().hex[:8]}.part"


_PARTIAL: dict[int, set[str]] = {}  # thread ident -> the temporary files it is writing now
_PARTIAL_LOCK = threading.Lock()


@contextlib.contextmanager
def partial_file(path):
    """Note `path` as a temporary file this thread is writing, for as long as the block runs."""
    ident, path = threading.get_ident(), str(path)
    with _PARTIAL_LOCK:
        _PARTIAL.setdefault(ident, set()).add(path)
    try:
        yield
    finally:
        with _PARTIAL_LOCK:
            _PARTIAL.get(ident, set()).discard(path)


def remove_partial_files(threads) -> list[str]:
    """Remove the temporary files that these (abandoned) threads are still writing; returns their paths."""
    with _PARTIAL_LOCK:
        paths = [p for t in threads for p in _PARTIAL.get(t.ident, ())]
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


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
    """Create `target` whole or not at all: `fill(file)` writes a temporary file in the same folder, which is
    flushed to disk and renamed; on any failure (ENOSPC, Ctrl-C) the temporary file is removed."""
    os.makedirs(posixpath.dirname(target) or ".", exist_ok=True)
    tmp = temp_name(target)
    try:
        with partial_file(tmp):  # until it has its real name (a stopped batch removes it)
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
    except BaseException as e:
        if isinstance(e, OSError):
            e.filename = e.filename or target  # a failed write() names no file: say which one
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def watch_callback(watch: Watch):
    """An fsspec callback that feeds a Watch: progress resets its wait, a stop request ends the copy."""
    from fsspec.callbacks import Callback

    class WatchCallback(Callback):
        def call(self, *args, **kwargs):
            watch.touch()
            watch.check()

    return WatchCallback()
