"""A batch of copies on worker threads that stops when asked: within about a second, not after the queue.

`run_batch` hands jobs to a few daemon threads and waits for them from the calling thread, a fraction of a second
at a time, so Ctrl-C (and SIGTERM turned into KeyboardInterrupt) is seen at once. On Ctrl-C, on a storage that
stopped answering (storage_wait.Watch), or on the first failure when `stop_on_error`, queued jobs are dropped and
running copies are told to stop (they check `watch.cancel` between chunks and remove their partial files); the
caller gets the exception after at most STOP_GRACE_SEC more. A copy stuck inside one network call is abandoned:
its thread is a daemon, and the landing folder of the file it was writing is removed (storage_copy.landing).
"""

from __future__ import annotations

import queue
import threading
import time

from .storage_copy import copying_for, remove_landings
from .storage_errors import TransferCancelled
from .storage_wait import TICK_SEC, Watch

STOP_GRACE_SEC = 1.5


def run_batch(jobs: list, workers: int, watch: Watch, detail=lambda: "", stop_on_error: bool = True) -> list[BaseException]:
    """Run the callables in `jobs`; returns the failures (raises the first one at once when `stop_on_error`)."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        with copying_for(watch):
            work()

    def work() -> None:
        while not watch.cancel.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except TransferCancelled:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                with lock:
                    failures.append(e)
                if stop_on_error:
                    watch.cancel.set()
            watch.touch()  # a finished file (or a definite failure) is an answer

    threads = [threading.Thread(target=worker, name=f"transfer-{i}", daemon=True) for i in range(min(workers, len(jobs)))]
    for thread in threads:
        thread.start()
    try:
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive or (stop_on_error and failures):
                break
            alive[0].join(TICK_SEC)
            watch.tick(detail())
    except BaseException:  # Ctrl-C, SIGTERM, or the watch giving up: stop everything, briefly wait, re-raise
        stop(threads, watch)
        raise
    if failures and stop_on_error:
        stop(threads, watch)
        raise failures[0]
    return failures


def stop(threads: list[threading.Thread], watch: Watch) -> None:
    watch.cancel.set()
    deadline = time.monotonic() + STOP_GRACE_SEC
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    remove_landings(watch)  # what abandoned copies were writing; finished ones removed their own
