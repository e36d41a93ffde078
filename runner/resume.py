"""Resuming base training from storage, and staging only trustworthy checkpoints.

On a rerun (the same backend or another one pointed at the same storage) base_train resumes with
`--resume_from_step` from the newest *complete* checkpoint in storage (manifest present, every file there at its
size, and the staged files matching the manifest's checksums); torn or unsealed ones are ignored and reported.
Optimizer state is sharded per process, so a different world size (nodes × GPUs) is refused with what to do
instead; on several nodes each node stages the model, the meta and only its own ranks' shards.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from .checkpoints import FILE_RE, MANIFEST, local_checkpoints, sha256, stored_checkpoints
from .errors import PlanError
from .storage import Storage
from .transfer import SyncState, pull


def drop_local(folder: Path, keep_step: int | None) -> None:
    """Remove scratch checkpoint files other than `keep_step`'s: leftovers of a killed run may be torn, and
    nanochat loads the highest step it finds."""
    for step, ckpt in local_checkpoints(folder).items():
        if step != keep_step:
            for path in ckpt.files.values():
                path.unlink(missing_ok=True)


def report_incomplete(stored, rel: str, log=print) -> None:
    for step, why in sorted(stored.incomplete.items()):
        log(f"ignoring checkpoint step {step} of {rel}: {why}")


def stage_newest_complete(storage: Storage, rel: str, local: Path, state: SyncState, log=print, stored=None, ranks=None,
                          at_step: int | None = None) -> int | None:
    """Pull only the newest complete checkpoint of `rel` (what nanochat will load), or the complete one at `at_step`;
    returns its step. `ranks`: the optimizer shards this node's processes load (several nodes; None: every shard).

    A folder without any manifest (made by hand, or by an older tool) is pulled whole, as it is.
    """
    if stored is None:
        stored = stored_checkpoints(storage, rel)
        report_incomplete(stored, rel, log)
    candidates = sorted(stored.complete.items(), reverse=True)
    if at_step is not None:
        candidates = [(s, m) for s, m in candidates if s == at_step]
        if not candidates:
            raise PlanError(f"Checkpoint step {at_step} of {storage.url_of(rel)} is not complete in storage.",
                            ["Run the launch again: the leader picks the newest complete checkpoint."])
    if not candidates:
        if not stored.incomplete:
            pull(storage, rel, local, state, log=log)
        return None
    for step, manifest in candidates:
        wanted = {name for name in manifest["files"] if ranks is None or _rank_of(name) in (None, *ranks)}
        pull(storage, rel, local, state, log=log, only=wanted)
        corrupt = [n for n, info in manifest["files"].items() if n in wanted and sha256(local / n) != info["sha256"]]
        if not corrupt:
            drop_local(local, step)
            return step
        log(f"checkpoint step {step} of {rel} does not match its manifest ({', '.join(corrupt)}); trying an older one")
        for name in corrupt:
            (local / name).unlink(missing_ok=True)
    raise PlanError(
        f"No checkpoint of {storage.url_of(rel)} matches its manifest: all are corrupt.",
        ["Delete the corrupt files (and their manifest_*.json) from storage.", "Then run again: the phase that makes them starts over."],
    )


def _rank_of(name: str) -> int | None:
    """The rank of an optimizer shard; None for the files every node loads (model, meta)."""
    match = FILE_RE.match(name)
    return int(match.group(3)) if match and match.group(3) is not None else None


def prepare_resume(storage: Storage, step, local: Path, state: SyncState, fresh: bool, log=print, processes: int | None = None,
                   ranks=None) -> list[str]:
    """Extra arguments for a resumable step: `FLAG=N` to resume from storage, or none for a fresh start.
    `processes`: the world size (default the step's processes on one node); `ranks`: this node's (None: all)."""
    processes = processes or step.nproc
    rel = step.checkpoints
    stored = stored_checkpoints(storage, rel)
    report_incomplete(stored, rel, log)
    if fresh or not stored.complete:
        if stored.complete:
            # This training starts over: old manifests must not pass for checkpoints of the new one.
            for old in sorted(stored.complete):
                storage.remove(posixpath.join(rel, MANIFEST.format(step=old)))
            log(f"{step.name}: starting fresh; unsealed {len(stored.complete)} earlier checkpoint(s) of {rel} (files kept until overwritten)")
        drop_local(local, None)
        return []
    newest, manifest = max(stored.complete.items())
    if manifest["processes"] != processes:
        raise PlanError(
            f"The newest checkpoint of {storage.url_of(rel)} (step {newest}) was written by {manifest['processes']} "
            f"processes, but this plan runs {processes}; nanochat shards optimizer state per process.",
            [f"Resume with --nodes × --gpus = {manifest['processes']} (e.g. --gpus {manifest['processes']} on one node).",
             "Or start base training over with --only base --fresh (earlier checkpoints are overwritten)."],
        )
    resumed = stage_newest_complete(storage, rel, local, state, log=log, stored=stored, ranks=ranks)
    if resumed is None:
        return []
    log(f"{step.name}: resuming from step {resumed}, the newest complete checkpoint in storage")
    return [f"{step.resume_flag}={resumed}"]
