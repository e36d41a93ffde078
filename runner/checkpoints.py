"""Checkpoints that are never half there: completeness checks, manifests, and the background uploader.

nanochat writes `model_{step:06d}.pt` + `meta_{step:06d}.json` (rank 0) and `optim_{step:06d}_rank{r}.pt` (every
rank) with plain torch.save: not atomic, so a preempted node leaves torn files. Here a checkpoint counts only
when its manifest (`manifest_{step:06d}.json`: files, sizes, sha256, process count) exists in storage, and the
manifest is written after every file it lists has landed whole. nanochat itself never reads the manifest (its
"last step" finder looks at model_*.pt only), so the checkpoint folder stays nanochat's own.

The uploader that puts each checkpoint into storage while training runs is in uploader.py.
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

from .storage import Storage

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
    processes = manifest.get("processes")  # 0: a checkpoint without optimizer shards (mid, SFT, RL)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 0:
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
