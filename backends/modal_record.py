"""A Modal run's record, kept in the run's own storage (`_runner/runs/<id>/modal.json`), and its handle.

The record says where the run went (app, Modal environment), its driver calls (a driver near Modal's 24 h cap
hands over to a fresh one), every stage call seen, and, once known, how it ended. It is written by the laptop
(at launch, and whenever status/logs/down learn something new) atomically, never kept in an expiring Modal
Dict: a finished run's record stays readable as long as its storage, after Modal has dropped its results.

The handle names the storage, so any terminal finds the record from the handle alone (no `?` or `&`: it is
typed into shells unquoted), and the Modal environment when the run chose one (its Volumes live there):

    modal://RUN_ID@modal://VOLUME/PREFIX        modal://RUN_ID@s3://BUCKET/PREFIX        modal://RUN_ID@modal://VOL/P@ENV

`modal://RUN_ID` alone reads the storage from RUNNER_STORAGE (and the environment from MODAL_ENVIRONMENT).
"""

from __future__ import annotations

import json
import os
import time

from runner.context import RUN_ID_RE
from runner.storage import RUNNER_DIR, open_storage

from .base import BackendError, RunInfo, State, state_from_exit

RECORD_VERSION = 1


def storage_options(storage: str, environment: str | None, options=()) -> list[str]:
    """A modal:// storage's Volume lives in the run's Modal environment."""
    extra = [f"environment_name={environment}"] if environment and storage.startswith("modal://") else []
    return [*options, *extra]


def record_path(run_id: str) -> str:
    return f"{RUNNER_DIR}/runs/{run_id}/modal.json"


def make_handle(run_id: str, storage: str, environment: str | None = None) -> str:
    return f"modal://{run_id}@{storage}" + (f"@{environment}" if environment else "")


def parse_handle(handle: str) -> tuple[str, str, str | None]:
    """(run id, storage URL, Modal environment or None) from a handle or a bare run id."""
    rest = handle[len("modal://"):] if handle.startswith("modal://") else handle
    run_id, _, storage = rest.partition("@")
    storage, _, environment = storage.partition("@")
    storage = storage or os.environ.get("RUNNER_STORAGE", "")
    if not RUN_ID_RE.match(run_id):
        raise BackendError(f"{handle!r} does not name a Modal run.", ["Use the handle `runner up --backend modal` printed: modal://RUN_ID@STORAGE."])
    if not storage:
        raise BackendError(
            f"{handle} does not say which storage holds the run's record.",
            ["Use the full handle `runner up` printed: modal://RUN_ID@modal://VOLUME/PREFIX, or",
             "export RUNNER_STORAGE=modal://VOLUME/PREFIX (the run's --storage) and use modal://RUN_ID."],
        )
    return run_id, storage, environment or None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


class RecordStore:
    """modal.json files in one storage."""

    def __init__(self, storage_url: str, storage=None, environment: str | None = None):
        self.url, self._storage, self.environment = storage_url, storage, environment

    @property
    def storage(self):
        if self._storage is None:
            self._storage = open_storage(self.url, storage_options(self.url, self.environment), check=False)
        return self._storage

    def read(self, run_id: str) -> dict | None:
        try:
            return json.loads(self.storage.read_text(record_path(run_id)))
        except FileNotFoundError:
            return None

    def write(self, record: dict) -> None:
        """Written whole (a local file is renamed into place; an object store PUT is atomic)."""
        self.storage.write_text(record_path(record["run_id"]), json.dumps(record, indent=2, sort_keys=True))

    def run_ids(self) -> list[str]:
        found = self.storage.find(f"{RUNNER_DIR}/runs")
        return sorted({path.split("/")[0] for path in found if path.endswith("/modal.json") and path.count("/") == 1})


def new_record(run_id: str, app: str, environment: str | None, storage: str, driver_call: str, stages: list[dict]) -> dict:
    return {"version": RECORD_VERSION, "run_id": run_id, "app": app, "environment": environment, "storage": storage,
            "started_at": now(), "finished_at": "", "drivers": [driver_call], "calls": {}, "stages": stages,
            "state": State.RUNNING.value, "exit_code": None, "reason": ""}


def merge_calls(record: dict, calls: list[dict]) -> bool:
    """Add stage calls (from a driver's result or the call graph); True when something was new."""
    changed = False
    for call in calls:
        known = record["calls"].setdefault(call["call_id"], {})
        for key, value in call.items():
            if key != "call_id" and known.get(key) != value:
                known[key] = value
                changed = True
    return changed


def finish(record: dict, result: dict, cancelled: bool = False) -> None:
    """Record a driver's final result: exit code, reason, its stage calls."""
    code = result.get("exit_code")
    merge_calls(record, result.get("calls", []))
    record.update(exit_code=code, reason=result.get("reason", ""), finished_at=record.get("finished_at") or now(),
                  state=state_from_exit(code, cancelled=cancelled or record.get("state") == State.CANCELLED.value).value)


def info_from(record: dict, handle: str) -> RunInfo:
    """A RunInfo from a record of any version: a field that is missing or malformed reads as unknown."""
    try:
        state = State(record.get("state", "unknown"))
    except ValueError:
        state = State.UNKNOWN
    code = record.get("exit_code")
    stages = [c for c in (record.get("calls") or {}).values() if isinstance(c, dict)]
    current = next((c.get("stage") for c in reversed(stages) if c.get("exit_code") is None), None)
    detail = f"app {record.get('app', '?')}" + (f" (environment {record['environment']})" if record.get("environment") else "")
    detail += f", driver call {(record.get('drivers') or ['?'])[-1]}"
    detail += f", stage {current}" if current and not state.is_terminal() else ""
    detail += f": {record['reason']}" if record.get("reason") else ""
    return RunInfo(handle=handle, run_id=str(record.get("run_id", "")), state=state,
                   exit_code=code if isinstance(code, int) else None, started_at=str(record.get("started_at", "")),
                   finished_at=str(record.get("finished_at", "")), storage=str(record.get("storage", "")), detail=detail)
