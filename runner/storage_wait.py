"""Waiting on storage, bounded and out loud.

A storage call (one listing, or a batch of copies) is watched: while nothing moves, a line says so every
REPORT_EVERY_SEC ("storage not answering for 45 s, still trying: ..."), and when nothing has moved for the budget
(RUNNER_STORAGE_TIMEOUT_SEC, default 100 s) the call is given up with a `StorageNotAnswering` that says what to
check. Transient failures inside a copy are retried within that same budget; permanent ones (storage_errors.py)
end the call at once. `cancel` is the flag every copy checks between chunks, so Ctrl-C stops them within a second.
"""

from __future__ import annotations

import sys
import threading
import time

from .storage_errors import StorageNotAnswering, TransferCancelled, is_permanent
from .storage_url import BUDGET_ENV, storage_budget_sec

REPORT_EVERY_SEC = 15.0
TICK_SEC = 0.25
MAX_BACKOFF_SEC = 8.0


def say_stderr(message: str) -> None:
    print(f"[runner] {message}", file=sys.stderr, flush=True)


class Watch:
    """The state of one storage call or batch: when something last moved, the last transient error, the stop flag."""

    def __init__(self, what: str, url: str, log=say_stderr, budget: float | None = None):
        self.what, self.url, self.log = what, url, log
        self.budget = budget if budget is not None else storage_budget_sec()
        self.cancel = threading.Event()
        self.last = time.monotonic()
        self.reported = 0
        self.last_error: BaseException | None = None
        # A line every 15 s; more often under a short budget, so that a wait is always reported before it ends.
        self.report_every = min(REPORT_EVERY_SEC, self.budget / 3)

    def touch(self, *_) -> None:
        """Something moved (bytes, a finished file): the wait starts over."""
        self.last = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.last

    def check(self) -> None:
        """Called by copies between chunks: stop here when the batch is being stopped."""
        if self.cancel.is_set():
            raise TransferCancelled(self.what)

    def tick(self, detail: str = "") -> None:
        """Called by the waiting thread a few times a second: report a long wait, give up at the budget."""
        idle = self.idle()
        if idle >= self.budget:
            self.cancel.set()
            raise self.not_answering()
        if idle < self.report_every:
            self.reported = 0
        elif idle >= (self.reported + 1) * self.report_every:
            self.reported = int(idle // self.report_every)
            error = f"; last error: {type(self.last_error).__name__}: {self.last_error}" if self.last_error else ""
            self.log(f"storage not answering for {idle:.0f} s, still trying: {self.what}{detail}{error}")

    def not_answering(self) -> StorageNotAnswering:
        error = f" (last error: {type(self.last_error).__name__}: {self.last_error})" if self.last_error else ""
        return StorageNotAnswering(
            f"The storage at {self.url} gave no answer for {self.idle():.0f} s while: {self.what}{error}.",
            ["Check that the storage server is up and answering (for S3: the endpoint in AWS_ENDPOINT_URL or --storage-option endpoint_url=...).",
             f"For a slow but working server, allow a longer wait with {BUDGET_ENV} (now {self.budget:.0f} s).",
             "Then run the same command again: what arrived whole is kept."],
        )

    def retrying(self, attempt):
        """Run `attempt()` again after transient failures, with backoff, until it succeeds, fails permanently,
        the batch is stopped, or the budget has passed without progress."""
        delay = 0.5
        while True:
            self.check()
            try:
                return attempt()
            except Exception as e:
                if is_permanent(e) or self.idle() + delay >= self.budget:
                    raise
                self.last_error = e
            if self.cancel.wait(delay):
                raise TransferCancelled(self.what)
            delay = min(delay * 2, MAX_BACKOFF_SEC)


def call_bounded(fn, what: str, url: str, log=say_stderr, budget: float | None = None):
    """Run one storage call (no retries) in a helper thread and wait for it out loud, for at most the budget.

    A call that hangs on a silent server is abandoned (its thread is a daemon, bounded by the socket timeouts);
    Ctrl-C reaches the waiting thread at once.
    """
    watch = Watch(what, url, log, budget)
    outcome: dict = {}
    done = threading.Event()

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name="storage-call", daemon=True).start()
    while not done.wait(TICK_SEC):
        watch.tick()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
