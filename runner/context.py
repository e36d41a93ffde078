"""The objects one node run is made of, named so a reader knows who owns what.

`RunContext` is what every part of the run reads and nobody replaces: the plan, the options, the storage, the
nanochat checkout, the local folders, the transfer state, the status record and the pre-seed items. It is built
once, checked before anything is written (run id, scratch space). `RunLedger` is what this invocation learns as it
goes (items missing offline, outputs an earlier skip left unmade, failed evaluations, skips, phases to start
fresh); only the agent and the step runner write it. `StepResult` is a step's outcome.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from . import preseed
from .errors import PlanError, RunnerError
from .status import StatusFile, run_dir
from .transfer import SyncState

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StepResult(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class DiskFull(RunnerError):
    """A local disk (scratch) has no room for the run."""

    exit_code = 6


def check_run_id(run_id: str) -> str:
    """Run ids name folders in storage and scratch: letters, digits, '.', '-', '_', at most 128, no leading dot."""
    if not RUN_ID_RE.match(run_id or ""):
        raise PlanError(
            f"Run id {run_id!r} cannot name a folder in storage.",
            ["Use 1-128 letters, digits, '.', '-' and '_', starting with a letter or digit (e.g. --run-id d20-first)."],
        )
    return run_id


def default_scratch() -> Path:
    """Fast local disk: /scratch when the image or host provides it, else the system temp dir."""
    if os.access("/scratch", os.W_OK):
        return Path("/scratch")
    return Path(tempfile.gettempdir()) / "nanochat-runner-scratch"


def check_scratch_space(scratch: Path, plan) -> None:
    """Refuse to start when scratch cannot hold the plan's shards and checkpoints (what staging will write)."""
    from .estimate import disk_need

    need = disk_need(plan)
    local = need["shards"] + need["checkpoints"]
    free = shutil.disk_usage(scratch).free
    if free < local:
        raise DiskFull(
            f"Scratch {scratch} has {free / 1e9:,.1f} GB free; this plan stages {local / 1e9:,.1f} GB there "
            f"({need['shards'] / 1e9:,.1f} GB of shards, {need['checkpoints'] / 1e9:,.1f} GB of checkpoints).",
            ["Free space there, or point --scratch (RUNNER_SCRATCH) at a bigger local disk."],
        )


def disk_full_error(where: str, error: OSError) -> DiskFull | None:
    """The user-facing error for ENOSPC/EDQUOT, or None for any other OSError."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return DiskFull(f"The disk filled up while {where} ({error}).", ["Free space on that disk (or point --scratch at a bigger one), then run the same command again: finished work is kept."])


@dataclass
class RunContext:
    plan: object
    options: object  # node.NodeOptions
    storage: object  # storage.Storage
    nanochat: object  # nanochat_env.Nanochat
    scratch: Path
    status: StatusFile
    state: SyncState
    items: dict = field(default_factory=dict)  # pre-seed items by name

    @classmethod
    def build(cls, plan, options, storage, nanochat) -> "RunContext":
        scratch = (Path(options.scratch).expanduser() if options.scratch else default_scratch()).resolve()
        ctx = cls(plan, options, storage, nanochat, scratch, status=None, state=None, items=preseed.items(plan))  # type: ignore[arg-type]
        for folder in (ctx.base_dir, ctx.cache_dir, ctx.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        ctx.state = SyncState(scratch)
        ctx.status = StatusFile(storage, plan, options.run_id, log=say)
        return ctx

    @property
    def run_id(self) -> str:
        return self.options.run_id

    @property
    def base_dir(self) -> Path:  # NANOCHAT_BASE_DIR
        return self.scratch / "base"

    @property
    def cache_dir(self) -> Path:
        return self.scratch / "cache"

    @property
    def log_dir(self) -> Path:
        return self.scratch / "logs" / self.options.run_id

    @property
    def run_dir(self) -> str:  # the run's folder in storage
        return run_dir(self.options.run_id)

    def phase_log(self, phase: str) -> str:
        return f"{self.run_dir}/logs/{phase}.log"


@dataclass
class RunLedger:
    missing_items: dict[str, str] = field(default_factory=dict)  # pre-seed items absent in an --offline run
    unavailable: dict[str, str] = field(default_factory=dict)  # storage path -> why no phase made it in this run
    eval_failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)  # phases whose resumable steps start over instead of resuming

    def missing_for(self, step) -> list[str]:
        return [n for n in step.uses if n in self.missing_items]


def say(message: str) -> None:
    print(f"[runner] {message}", flush=True)
