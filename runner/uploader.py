"""The background checkpoint uploader: a thread of the node agent that watches a checkpoint folder in scratch while
training runs and uploads each checkpoint as soon as it is complete (files first, manifest last, checkpoints.py),
so training never waits for the network. Storage that is briefly unreachable is retried until it answers again,
within the storage budget; a permission error, a full disk or a lost lease ends it at once. On several nodes each
node uploads its own ranks' shards and the leader seals a checkpoint when every node's part is in storage.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from .checkpoints import (FILE_RE, MANIFEST, POLL_SEC, RETRY_MAX_SEC, LocalCheckpoint, NodeShare, file_facts, is_whole,
                          local_checkpoints, lower_priority, manifest_for, missing_parts, stored_checkpoints)
from .lease import LeaseLost
from .storage import Storage, object_tag
from .storage_errors import StorageNotAnswering, explain_storage_error, is_disk_full, is_permission
from .storage_url import BUDGET_ENV, storage_budget_sec
from .transfer import SyncState


class CheckpointUploader:
    """Uploads each complete checkpoint from a scratch folder while training runs; manifest last."""

    def __init__(self, storage: Storage, local: Path, rel: str, nproc: int, state: SyncState, log=print, optimizer: bool = True,
                 poll_sec: float = POLL_SEC, share: NodeShare | None = None):
        self.storage, self.local, self.rel, self.nproc, self.state, self.log = storage, local, rel, nproc, state, log
        self.optimizer, self.poll_sec, self.share = optimizer, poll_sec, share
        self.unsealed: set[int] = set()  # the leader's steps whose files are up, waiting for other nodes' parts
        self.done: set[int] = set()
        self.sizes: dict[str, int] = {}  # last seen sizes, for "stopped growing"
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.failures = 0
        self.uploaded: list[int] = []
        self.fatal: Exception | None = None  # a permanent failure, raised by finish()
        self.last_error = ""
        self.started: dict[int, float] = {}

    def start(self) -> "CheckpointUploader":
        self.done |= set(stored_checkpoints(self.storage, self.rel).complete)
        self.thread = threading.Thread(target=self._loop, name="checkpoint-upload", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        lower_priority()
        while not self.stop_event.wait(self.poll_sec):
            self._pass(final=False)  # a final failure sets self.fatal and stops the loop; finish() raises it

    def finish(self) -> list[int]:
        """Stop watching and upload what is left (the training process has exited, so files are final)."""
        self.stop_event.set()
        if self.thread:
            self.thread.join()
        # Storage that stays away is given up after the storage budget without progress (RUNNER_STORAGE_TIMEOUT_SEC),
        # not retried for half an hour: the error says so, and the checkpoints stay in scratch for a rerun.
        budget, seen, last_progress = storage_budget_sec(), len(self.uploaded), time.monotonic()
        while not self.fatal and not self._pass(final=True):
            if len(self.uploaded) != seen:
                seen, last_progress = len(self.uploaded), time.monotonic()
            elif time.monotonic() - last_progress >= budget:
                raise StorageNotAnswering(
                    f"Checkpoints of {self.rel} could not be uploaded to {self.storage.url} for {budget:.0f} s after training "
                    f"ended (last error: {self.last_error}).",
                    ["Check that the storage is up and reachable from this node.",
                     f"Run the same command again while this node's scratch still holds them; {BUDGET_ENV} sets how long to wait."],
                )
            time.sleep(min(RETRY_MAX_SEC, 2 ** min(self.failures, 6), budget / 4))
        if self.fatal:
            raise self.fatal
        # Several nodes: the other nodes upload their shards after their own ranks exit; wait for them, bounded.
        deadline = time.monotonic() + (self.share.wait_sec if self.share else 0)
        while self.unsealed and time.monotonic() < deadline:
            time.sleep(self.poll_sec)
            self._seal_waiting()
        for step in sorted(self.unsealed):
            self.log(f"checkpoint step {step} of {self.rel} stays unsealed: another node's optimizer shards never reached storage")
        return self.uploaded

    def _ready(self, ckpt: LocalCheckpoint, final: bool) -> bool:
        """All parts present, none grew since the last look (unless the trainer has exited), all whole."""
        if missing_parts(ckpt, self.nproc, self.optimizer, self.share):
            return False
        ready = True
        for name, path in ckpt.files.items():
            size = path.stat().st_size
            grown = self.sizes.get(name) != size
            self.sizes[name] = size
            ready = ready and (final or not grown)
        return ready and all(is_whole(p) for p in ckpt.files.values())

    def _pass(self, final: bool) -> bool:
        """One look at the folder; returns True when nothing ready is left to upload."""
        try:
            for step, ckpt in sorted(local_checkpoints(self.local).items()):
                if step in self.done or step in self.unsealed or not self._ready(ckpt, final):
                    continue
                self._upload(ckpt)
            self._seal_waiting()
            self.failures = 0
            return True
        except Exception as e:  # noqa: BLE001 - storage may be briefly unreachable: retry on the next pass
            if isinstance(e, LeaseLost):  # another agent writes here now: stop, and say so in the agent's thread
                self.fatal = e
                self.stop_event.set()
                return True
            if is_permission(e) or is_disk_full(e):  # another pass cannot help: fail now, with the cause
                self.fatal = explain_storage_error(self.storage.url, e)
                self.stop_event.set()
                return True
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if self.failures in (1, 5, 20) or self.failures % 100 == 0:
                self.log(f"checkpoint upload failed ({type(e).__name__}: {e}); retrying")
            return False

    def _upload(self, ckpt: LocalCheckpoint) -> None:
        started = time.monotonic()
        if self.share and not self.share.leader:  # a follower's own: its ranks' shards (model and meta are rank 0's)
            ckpt = LocalCheckpoint(ckpt.step, {n: p for n, p in ckpt.files.items() if n.startswith("optim_") and int(FILE_RE.match(n).group(3)) in self.share.ranks})
        for name, path in sorted(ckpt.files.items()):
            if self.state.in_sync(path):
                continue  # landed on an earlier pass
            target = self.storage.path(f"{self.rel}/{name}")
            self.storage.put_file(str(path), target)  # whole or not at all, even on a local disk
            info = self.storage.fs.info(target)
            if info.get("size") != path.stat().st_size:
                raise OSError(f"{target} landed with {info.get('size')} bytes, expected {path.stat().st_size}")
            self.state.record(path, object_tag(info))
        self.state.save()
        self.started[ckpt.step] = started
        if self.share and not self.share.leader:
            # A follower's files count once the leader merges them into the manifest; it says which are its own.
            self.share.board.write_part(self.rel, ckpt.step, file_facts(ckpt.files))
            self.done.add(ckpt.step)
            self.uploaded.append(ckpt.step)
            self.log(f"checkpoint step {ckpt.step}: this node's shards are in storage ({', '.join(sorted(ckpt.files))})")
            return
        self.unsealed.add(ckpt.step)
        self._seal_waiting()

    def _seal_waiting(self) -> None:
        """Write the manifest of each uploaded step whose other nodes' parts are all in storage (one node: at once)."""
        for step in sorted(self.unsealed):
            others = self.share.board.parts(self.rel, step) if self.share else {}
            if others is None:
                continue
            ckpt = local_checkpoints(self.local)[step]
            manifest = manifest_for(ckpt, self.nproc if self.optimizer else 0, others)
            self.storage.write_text(f"{self.rel}/{MANIFEST.format(step=step)}", json.dumps(manifest, indent=2))
            self.unsealed.discard(step)
            self.done.add(step)
            self.uploaded.append(step)
            size = sum(f["size"] for f in manifest["files"].values())
            self.log(f"checkpoint step {step} is in storage ({size / 1e6:,.1f} MB in {time.monotonic() - self.started.pop(step, time.monotonic()):.1f}s, manifest written)")
