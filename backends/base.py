"""The backend contract: what every backend (local Docker, SSH host, Modal) implements, and nothing more.

Modelled on torchx's scheduler API, minus its generics: a `RunSpec` says what to run (a plan, a storage URL,
the image, GPUs, environment, the node agent's options); `prepare` turns it into a `Prepared` launch without
spending anything (its text is the dry run: the dry run is the object that gets launched), `preflight` checks the
machine and returns the `Prepared` to start (an image found or built, a mode chosen), `launch` starts it detached
and returns a handle string, and later, from any terminal, the handle alone finds the run again (`describe`,
`logs`, `cancel`). Handles look like `local://nanochat-<run id>`: the scheme names the backend, the rest is the
backend's own id, so no job database is kept on the laptop. What the node runs is described once in launch.py.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator

from runner.errors import RunnerError

from .launch import NodeCommand

# Variables a run may need on the node; forwarded when set here. Values are never printed.
FORWARDED_ENV = (
    "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "HF_TOKEN",
    "RUNNER_PRESEED_ATTEMPTS", "RUNNER_PRESEED_BACKOFF_SEC",
)
S3_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)
EXIT_EVAL_FAILED = 3  # the node agent's "finished, but evaluation steps failed"
CANCEL_EXIT_CODES = (130, 137, 143)  # interrupted by SIGTERM/SIGINT, or killed after the grace period


class BackendError(RunnerError):
    """A backend cannot do what was asked (engine unreachable, run not found, image missing...)."""


class PreflightError(RunnerError):
    """The machine cannot run this plan (no NVIDIA runtime, too few GPUs, too little disk); nothing was started."""


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    def is_terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


def state_from_exit(code: int | None, cancelled: bool = False) -> State:
    if code is None:
        return State.UNKNOWN
    if code in (0, EXIT_EVAL_FAILED):
        return State.SUCCEEDED
    if cancelled or code in CANCEL_EXIT_CODES:
        return State.CANCELLED
    return State.FAILED


@dataclass
class RunSpec:
    """Everything a backend needs to start one run of `runner node run`."""

    plan: object  # runner.plan.Plan
    storage: str
    storage_options: list[str] = field(default_factory=list)
    # The node agent's own options (runner node run --offline/--force/--fresh/--from/--only/--heartbeat-sec).
    offline: bool = False
    force: bool = False
    fresh: bool = False
    from_phase: str | None = None
    only_phase: str | None = None
    heartbeat_sec: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the node (-e/--env)
    image: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    build_context: str | None = None
    rebuild: bool = False
    gpu_ids: str | None = None  # None: the plan's GPU count; "all"; or "0,1,..."
    scratch: str | None = None  # a host folder for the node's scratch (else the container's own disk)

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def node_command(self, storage: str | None = None, **paths) -> NodeCommand:
        """`runner node run` for this spec; `storage` as the node sees it, `paths` = plan_file, nanochat_dir, scratch."""
        return NodeCommand(
            storage=storage or self.storage, run_id=self.run_id, storage_options=tuple(self.storage_options),
            offline=self.offline, force=self.force, fresh=self.fresh, from_phase=self.from_phase,
            only_phase=self.only_phase, heartbeat_sec=self.heartbeat_sec, **paths,
        )

    def node_env(self) -> dict[str, str]:
        """The node's environment: forwarded variables that are set here, S3 credentials for s3://, then --env."""
        names = list(FORWARDED_ENV)
        if self.storage.startswith(("s3://", "s3a://")):
            names += S3_ENV
        env = {name: os.environ[name] for name in names if os.environ.get(name)}
        env.update(self.env)
        return env


@dataclass
class RunInfo:
    """What a backend knows about one run."""

    handle: str
    run_id: str
    state: State
    exit_code: int | None = None
    started_at: str = ""
    finished_at: str = ""
    storage: str = ""
    detail: str = ""  # backend-specific words: the container's status, the host...


Log = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """A launch ready to start: `request` is exactly what `launch` hands to the engine (Docker SDK arguments, a
    script, Modal calls), `render` how it reads; `str()` is the dry run."""

    spec: RunSpec
    summary: tuple[str, ...]  # for a person: where it runs, what preflight checks, the handle
    request: Any
    render: Callable[[Any], list[str]] = lambda request: []

    def __str__(self) -> str:
        return "\n".join([*self.summary, *self.render(self.request)])


class Backend(ABC):
    """One place runs can be started; see the module docstring for the contract."""

    name: str = ""
    multinode: bool = False  # starts one node agent per node of a `--nodes N` plan (else: refused for N > 1)

    def handle_for(self, ident: str) -> str:
        return f"{self.name}://{ident}"

    @abstractmethod
    def prepare(self, spec: RunSpec) -> Prepared:
        """The launch for this spec, touching nothing: no engine, no network. Its text is the dry run."""

    @abstractmethod
    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        """Check the machine can run it and make what the launch needs (an image, an install); raise
        `PreflightError` with the fix. Returns the `Prepared` to launch; starts no run."""

    @abstractmethod
    def launch(self, prepared: Prepared) -> str:
        """Start the prepared run detached (it survives this process); return its handle."""

    @abstractmethod
    def describe(self, handle: str) -> RunInfo:
        """The run's state; raises `BackendError` when the handle names no run."""

    @abstractmethod
    def list_runs(self) -> list[RunInfo]:
        """Every run this backend still knows about."""

    @abstractmethod
    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """The run's output, line by line; with `follow`, until the run ends."""

    @abstractmethod
    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        """Stop the run (the node agent gets SIGTERM and `grace_sec` to stop its phase) and release its resources."""


def split_handle(handle: str) -> tuple[str, str]:
    """("local", "nanochat-x") from "local://nanochat-x"; a bare name has no scheme ("")."""
    scheme, sep, rest = handle.partition("://")
    return (scheme, rest) if sep else ("", handle)
