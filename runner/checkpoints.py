"""Checkpoints that are never half there: completeness checks, manifests, and the background uploader.

nanochat writes `model_{step:06d}.pt` + `meta_{step:06d}.json` (rank 0) and `optim_{step:06d}_rank{r}.pt` (every
rank) with plain torch.save: not atomic, so a preempted node leaves torn files. Here a checkpoint counts only
when its manifest (`manifest_{step:06d}.json`: files, sizes, sha256, process count) exists in storage, and the
manifest is written after every file it lists has landed whole. nanochat itself never reads the manifest (its
"last step" finder looks at model_*.pt only), so the checkpoint folder stays nanochat's own.

`CheckpointUploader` watches a checkpoint folder in scratch while training runs and uploads each checkpoint as
soon as it is complete, from a thread of the node agent, so training never waits for the network; when storage
is briefly unreachable it keeps retrying and catches up.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .lease import LeaseLost
from .storage import Storage, object_tag
from .storage_errors import StorageNotAnswering, explain_storage_error, is_disk_full, is_permission
from .storage_url import BUDGET_ENV, storage_budget_sec
from .transfer import SyncState

FILE_RE = re.compile(r"^(model|meta|optim)_(\d+)(?:_rank(\d+))?\.(pt|json)$")
MANIFEST = "manifest_{step:06d}.json"
MANIFEST_RE = re.compile(r"^manifest_(\d+)\.json$")
POLL_SEC = 2.0
RETRY_MAX_SEC = 60.0


def lower_priority() -> None:
    """Make the calling thread, and fsspec's I/O thread that does the hashing and signing of uploads, yield the
    CPU to the trainer (Linux applies nice per thread). Uploads still use every idle cycle."""
    import os

    threads = [threading.get_native_id()]
    try:
        import fsspec.asyn

        if fsspec.asyn.iothread[0] is not None:
            threads.append(fsspec.asyn.iothread[0].native_id)
    except (ImportError, AttributeError):
        pass
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except (OSError, AttributeError):
            pass


@dataclass
class LocalCheckpoint:
    step: int
    files: dict[str, Path] = field(default_factory=dict)

    def ranks(self) -> set[int]:
        return {int(FILE_RE.match(n).group(3)) for n in self.files if n.startswith("optim_")}


def local_checkpoints(folder: Path) -> dict[int, LocalCheckpoint]:
    found: dict[int, LocalCheckpoint] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = FILE_RE.match(path.name)
        if match:
            step = int(match.group(2))
            found.setdefault(step, LocalCheckpoint(step)).files[path.name] = path
    return found


def is_whole(path: Path) -> bool:
    """torch.save writes a zip archive (its directory comes last); meta is JSON. A torn file fails these."""
    try:
        if path.suffix == ".pt":
            return zipfile.is_zipfile(path)
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def missing_parts(ckpt: LocalCheckpoint, nproc: int, optimizer: bool = True, share: NodeShare | None = None) -> list[str]:
    """The files of this checkpoint that this node writes and does not have yet (one node: all of them)."""
    step = ckpt.step
    wanted = [f"model_{step:06d}.pt", f"meta_{step:06d}.json"] if share is None or share.leader else []
    if optimizer:
        wanted += [f"optim_{step:06d}_rank{r}.pt" for r in (share.ranks if share else range(nproc))]
    return [name for name in wanted if name not in ckpt.files]


@dataclass(frozen=True)
class NodeShare:
    """One node's share of a checkpoint written by several nodes: rank 0's node (the leader) writes model, meta
    and its ranks' optimizer shards and seals the checkpoint once every other node's part record is in storage;
    every other node uploads its own ranks' shards and writes a part record (board: multinode.LaunchBoard)."""

    leader: bool
    ranks: range
    board: object
    wait_sec: float


def file_facts(files: dict[str, Path]) -> dict[str, dict]:
    return {name: {"size": path.stat().st_size, "sha256": sha256(path)} for name, path in sorted(files.items())}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_for(ckpt: LocalCheckpoint, nproc: int, other_nodes: dict | None = None) -> dict:
    """The manifest of a checkpoint: this node's files, plus the other nodes' (from their part records)."""
    return {
        "step": ckpt.step,
        "processes": nproc,
        "files": dict(sorted({**(other_nodes or {}), **file_facts(ckpt.files)}.items())),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def manifest_problem(manifest) -> str | None:
    """What makes a manifest unusable (written by hand, or by something else), or None: it must name the process
    count and at least one file with its size, as `manifest_for` writes them."""
    if not isinstance(manifest, dict):
        return f"is not a JSON object ({type(manifest).__name__})"
    if not isinstance(manifest.get("processes"), int) or manifest["processes"] < 1:
        return "has no process count"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "lists no files"
    if not all(isinstance(info, dict) and isinstance(info.get("size"), int) for info in files.values()):
        return "lists files without sizes"
    return None


@dataclass
class StoredCheckpoints:
    """What a checkpoint folder in storage holds: complete steps (with manifests) and incomplete ones."""

    complete: dict[int, dict]
    incomplete: dict[int, str]

    def newest(self) -> tuple[int, dict] | None:
        if not self.complete:
            return None
        step = max(self.complete)
        return step, self.complete[step]


def stored_checkpoints(storage: Storage, rel: str) -> StoredCheckpoints:
    """Check every manifest against the files actually in storage; steps without a valid one are incomplete."""
    listing = storage.find(rel)
    complete, incomplete = {}, {}
    steps_with_files = {int(m.group(2)) for name in listing if (m := FILE_RE.match(posixpath.basename(name)))}
    manifests = {int(m.group(1)): name for name in listing if (m := MANIFEST_RE.match(posixpath.basename(name)))}
    for step, name in manifests.items():
        try:
            manifest = json.loads(storage.read_text(f"{rel}/{name}"))
        except (FileNotFoundError, ValueError):
            incomplete[step] = "its manifest is unreadable"
            continue
        if (problem := manifest_problem(manifest)) is not None:
            incomplete[step] = f"its manifest {problem}"
            continue
        wrong = [f for f, info in manifest.get("files", {}).items() if listing.get(f, (None,))[0] != info["size"]]
        if wrong:
            incomplete[step] = f"{len(wrong)} file(s) missing or of the wrong size ({', '.join(sorted(wrong)[:3])})"
        else:
            complete[step] = manifest
    for step in steps_with_files - set(manifests):
        incomplete[step] = "no manifest (its upload did not finish)"
    return StoredCheckpoints(complete, incomplete)


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


def seal(storage: Storage, local: Path, rel: str, log=print, board=None) -> list[int]:
    """After a phase pushed a checkpoint folder: write the manifest of every whole local checkpoint lacking one.

    Used for the checkpoints of phases that save only at the end (mid, SFT, RL), whose files are pushed with
    the phase's outputs; the process count is the number of optimizer shards present.
    """
    stored = stored_checkpoints(storage, rel)
    sealed = []
    for step, ckpt in sorted(local_checkpoints(local).items()):
        if step in stored.complete or missing_parts(ckpt, 0, optimizer=False):
            continue
        if not all(is_whole(p) for p in ckpt.files.values()):
            log(f"not sealing checkpoint step {step} of {rel}: a file is torn")
            continue
        others = (board.parts(rel, step) if board else None) or {}  # the other nodes' shards (several nodes)
        ranks = ckpt.ranks() | {int(FILE_RE.match(n).group(3)) for n in others if n.startswith("optim_")}
        manifest = manifest_for(ckpt, len(ranks), others)
        storage.write_text(f"{rel}/{MANIFEST.format(step=step)}", json.dumps(manifest, indent=2))
        sealed.append(step)
    return sealed


def is_checkpoint_dir(rel: str) -> bool:
    return posixpath.basename(posixpath.dirname(rel.rstrip("/"))).endswith("_checkpoints")
