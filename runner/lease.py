"""One writer per model folder: a lease object in storage, `_runner/leases/<model tag>.json`.

Two node agents on the same storage (the same run id, or two runs of the same model) would otherwise both train
and overwrite each other's checkpoints and markers. The node agent takes the lease before its first write, renews
it every heartbeat, and releases it at the end; a second agent is refused at once and told who holds it, since
when, and how to take over. A lease whose heartbeat stopped (the holder was killed) expires after a few intervals;
`--steal` then takes it over (a rerun of the same run id does so by itself, and at once when the holder is
provably dead: same machine, process gone). `--steal-now` takes even a fresh lease.

Taking and renewing are compare-and-swap writes, so two agents racing cannot both win:
- S3: a conditional PUT (If-None-Match: * to create, If-Match: <ETag> to renew or steal);
- a local folder: the read-compare-replace runs under an flock'd lock file, the record written by atomic rename;
- any other filesystem: write, then read back after a pause and check the record is ours.
An agent whose lease was taken from it stops before its next write (`GuardedStorage` refuses them).
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from .errors import RunnerError
from .lease_slots import Conflict, slot
from .storage import RUNNER_DIR

LEASE_DIR = f"{RUNNER_DIR}/leases"
EXPIRY_HEARTBEATS = 4  # a lease not renewed for this many heartbeats has expired
MIN_TTL_SEC = 5.0


class LeaseHeld(RunnerError):
    """Another node agent writes to this model's folder in storage."""

    exit_code = 8


class LeaseLost(RunnerError, PermissionError):
    """This agent's lease was taken over by another agent; it must not write any more. A PermissionError, so that
    retry loops treat it as final, never as a storage blip."""

    exit_code = 8


@dataclass
class LeaseRecord:
    model: str
    run_id: str
    host: str
    pid: int
    boot_id: str
    token: str  # unique per agent process: tells a rerun of the same run id from the holder itself
    taken_at: float
    heartbeat_at: float
    expires_at: float

    @classmethod
    def parse(cls, text: str) -> "LeaseRecord | None":
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None  # a torn or foreign record holds nothing

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) >= self.expires_at

    def provably_dead(self) -> bool:
        """The holder ran on this machine (same boot) and its process is gone."""
        if self.host != socket.gethostname() or self.boot_id != _boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:  # a zombie holds nothing
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return False

    def describe(self) -> str:
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}), holding it since {_iso(self.taken_at)}, "
                f"last heartbeat {_iso(self.heartbeat_at)}")


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- the lease ---------------------------------------------------------------------------------------------------


class ModelLease:
    """This agent's claim on one model's folder. `acquire` once (the leader of a multi-node run only), then `keep`
    renews it every `heartbeat_sec` in a thread; `release` at the end. Use as a context manager for all three."""

    def __init__(self, storage, model: str, run_id: str, heartbeat_sec: float, log=print):
        self.storage, self.model, self.run_id, self.log = storage, model, run_id, log
        self.rel = f"{LEASE_DIR}/{model}.json"
        self.heartbeat_sec = heartbeat_sec
        self.ttl = max(MIN_TTL_SEC, EXPIRY_HEARTBEATS * heartbeat_sec)
        self.slot = slot(storage, self.rel)
        self.token = uuid.uuid4().hex
        self.version: str | None = None
        self.record: LeaseRecord | None = None
        self.lost_to: LeaseRecord | None = None  # set when another agent took the lease from us
        self.lost_for = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_record(self, taken_at: float | None = None) -> LeaseRecord:
        now = time.time()
        return LeaseRecord(self.model, self.run_id, socket.gethostname(), os.getpid(), _boot_id(), self.token,
                           taken_at or now, now, now + self.ttl)

    def _write(self, record: LeaseRecord, version: str | None) -> None:
        text = json.dumps(asdict(record), indent=2)
        self.version = self.slot.swap(text, version)
        self.record = record

    # -- taking it -------------------------------------------------------------------------------------------

    def acquire(self, steal: bool = False, steal_now: bool = False, wait_sec: float = 0.0) -> None:
        """Take the lease, or raise LeaseHeld naming the holder and how to take over. With `wait_sec`, a lease of
        this same run id that expires within that time is waited for (a backend's retry after a preemption)."""
        races = 0
        while races < 3:  # a lost race re-reads and decides again
            text, version = self.slot.read()
            holder = LeaseRecord.parse(text) if text is not None else None
            if text is not None and holder is None:
                self.log(f"the lease {self.storage.url_of(self.rel)} is unreadable (torn write); taking it over")
            elif holder is not None and not self._may_take(holder, steal, steal_now):
                left = holder.expires_at - time.time()
                if holder.run_id == self.run_id and 0 < left <= wait_sec:
                    self.log(f"waiting {left:.0f}s for the lease of {holder.describe()} to expire (its agent may have been preempted)")
                    time.sleep(left + 0.5)
                    wait_sec -= left + 0.5
                    continue
                raise self._held_error(holder, steal)
            try:
                self._write(self._new_record(), version)
                return
            except Conflict:
                races += 1
        text, _ = self.slot.read()
        holder = LeaseRecord.parse(text or "")
        raise self._held_error(holder, steal) if holder else LeaseHeld(
            f"Another node agent keeps rewriting the lease {self.storage.url_of(self.rel)}.", ["Stop the other agent, then run again."])

    def _may_take(self, holder: LeaseRecord, steal: bool, steal_now: bool) -> bool:
        if steal_now:
            self.log(f"--steal-now: taking the lease of model {self.model} from {holder.describe()}")
            return True
        if holder.provably_dead():
            self.log(f"taking over the lease of model {self.model}: {holder.describe()}; that process is gone")
            return True
        if holder.expired() and (steal or holder.run_id == self.run_id):
            self.log(f"taking over the expired lease of model {self.model}: {holder.describe()}")
            return True
        return False

    def _held_error(self, holder: LeaseRecord, steal: bool) -> LeaseHeld:
        where = self.storage.url_of(self.rel)
        if holder.expired():
            return LeaseHeld(
                f"Model {self.model} in this storage was being written by {holder.describe()}; its lease expired at "
                f"{_iso(holder.expires_at)} ({where}).",
                ["If that agent is gone, take over: run the same command with --steal.", "If it is still running, let it finish (`runner status`)."])
        fixes = [f"Wait for it to finish (`runner status`), or use another storage prefix for a second run of {self.model}.",
                 f"If that agent is gone, its lease expires at {_iso(holder.expires_at)}; then run the same command with --steal."]
        if steal:
            fixes.append("To take a fresh lease anyway (only when you are sure that agent is gone): --steal-now.")
        return LeaseHeld(f"Model {self.model} in this storage is being written by {holder.describe()} ({where}).", fixes)

    # -- keeping it ------------------------------------------------------------------------------------------

    def renew(self) -> bool:
        """Push the expiry on; False (and `lost_to` set) when another agent has taken the lease."""
        if self.record is None or self.lost_to is not None:
            return False
        record = self._new_record(self.record.taken_at)
        try:
            self._write(record, self.version)
            return True
        except Conflict:
            text, _ = self.slot.read()
            self.lost_to = LeaseRecord.parse(text or "") or record
            self.lost_for = "taken over" if text else "deleted"
            return False

    def keep(self) -> None:
        """Renew every heartbeat in a thread; on loss, interrupt the main thread (the running step stops)."""
        def loop() -> None:
            while not self._stop.wait(self.heartbeat_sec):
                try:
                    if not self.renew():
                        self.log(self.lost_error().args[0])
                        _thread.interrupt_main()
                        return
                except Exception as e:  # noqa: BLE001 - a storage blip: the next heartbeat tries again
                    self.log(f"could not renew the lease ({type(e).__name__}: {e}); will retry")

        self._thread = threading.Thread(target=loop, name="lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost once another agent holds the lease: called before every write."""
        if self.lost_to is not None:
            raise self.lost_error()

    def lost_error(self) -> LeaseLost:
        other = self.lost_to
        who = other.describe() if other and other.token != self.token else "someone"
        return LeaseLost(f"This agent lost the lease of model {self.model} ({self.lost_for} by {who}); it stopped "
                         "before writing anything more to storage.",
                         ["Another agent now writes this model's folder; check it with `runner status`.",
                          "To continue here instead, stop that agent, then run the same command with --steal."])

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.record is None or self.lost_to is not None:
            return
        try:
            self.slot.delete(self.version)
        except Exception as e:  # noqa: BLE001 - it expires by itself
            self.log(f"could not release the lease ({type(e).__name__}: {e}); it expires at {_iso(self.record.expires_at)}")
        self.record = None

    def __enter__(self) -> "ModelLease":
        self.keep()
        return self

    def __exit__(self, kind, error, tb) -> None:
        self.release()
        if self.lost_to is not None:  # whatever stopped the run, this is why
            raise self.lost_error() from None


class GuardedStorage:
    """The run's storage, refusing every write once the lease is lost (reads go through unchanged)."""

    WRITES = ("write_text", "write_bytes", "remove")

    def __init__(self, storage, lease: ModelLease):
        self._storage, self._lease = storage, lease
        self.fs = _GuardedFS(storage.fs, lease)

    def __getattr__(self, name):
        value = getattr(self._storage, name)
        if name in self.WRITES:
            def guarded(*args, **kwargs):
                self._lease.check()
                return value(*args, **kwargs)
            return guarded
        return value


class _GuardedFS:
    WRITES = {"put_file", "put", "pipe_file", "pipe", "rm", "rm_file", "mv", "copy", "cp_file", "touch", "makedirs", "mkdir", "call_s3"}

    def __init__(self, fs, lease: ModelLease):
        self._fs, self._lease = fs, lease

    def __getattr__(self, name):
        value = getattr(self._fs, name)
        if name in self.WRITES or name == "open":
            def guarded(*args, **kwargs):
                mode = kwargs.get("mode", args[1] if len(args) > 1 else "rb")
                if name != "open" or any(c in str(mode) for c in "wax+"):
                    self._lease.check()
                return value(*args, **kwargs)
            return guarded
        return value


def hold_model_lease(ctx, log=print) -> ModelLease:
    """Take the lease of the run's model and route the run's storage through the lease's guard; the caller uses the
    returned lease as a context manager around the run. A follower of a multi-node run does not call this."""
    options = ctx.options
    lease = ModelLease(ctx.storage, ctx.plan.model_tag, ctx.run_id, options.heartbeat_sec, log=log)
    lease.acquire(steal=getattr(options, "steal", False), steal_now=getattr(options, "steal_now", False),
                  wait_sec=getattr(options, "lease_wait_sec", 0.0))
    ctx.storage = GuardedStorage(ctx.storage, lease)
    ctx.status.storage = ctx.storage
    return lease
