"""The run's status file in storage: `_runner/runs/<run_id>/status.json`.

Anyone with access to the storage (the laptop, another terminal, a dashboard) reads where a run is: its state,
each phase and step with times and outcome, and the latest training progress. Writes are throttled, except for
state changes, which are written at once. Each write replaces the whole record (Storage.write_text: one PUT, or a
temporary file renamed locally), in order. While the agent runs, `beating` rewrites it every heartbeat with
`heartbeat_at`, so readers can tell a run that was killed (-9, machine gone) from one that is running. A rerun
that finds an unreadable record keeps going with a new history and says so.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

from .lease import LeaseLost
from .storage import RUNNER_DIR, Storage

PROGRESS_WRITE_INTERVAL = 10.0


def run_dir(run_id: str) -> str:
    return f"{RUNNER_DIR}/runs/{run_id}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StatusFile:
    def __init__(self, storage: Storage, plan, run_id: str, log=print):
        self.storage, self.log = storage, log
        self.path = f"{run_dir(run_id)}/status.json"
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()  # writes leave in the order their text was made
        self.last_write = 0.0
        self.data: dict = {
            "run_id": run_id,
            "state": "starting",
            "recipe": plan.recipe,
            "commit": plan.commit,
            "model": plan.model,
            "gpus": plan.gpus,
            "gpu_type": plan.gpu_type,
            "started_at": now_iso(),
            "updated_at": now_iso(),
            "phase": None,
            "step": None,
            "progress": {},
            "metrics": {},
            "phases": {p.name: {"state": "pending", "steps": {}} for p in plan.phases},
            "eval_failures": [],
            "skipped": [],
            "attempts": 1,
            "node_seconds": 0.0,  # wall time of every attempt so far: what the node was billed for
            "resumes": [],
            "heartbeat_sec": None,
            "heartbeat_at": None,
        }
        self.attempt_started = time.monotonic()
        self.seconds_before = 0.0
        self._continue_previous(plan)

    def _continue_previous(self, plan) -> None:
        """A rerun under the same run id (after a failure or preemption) keeps the history of the earlier ones."""
        from .runlogs import parse_status

        try:
            text = self.storage.read_text(self.path)
        except FileNotFoundError:
            return
        except UnicodeDecodeError as e:
            text = f"<{e}>"
        previous, problem = parse_status(text)
        if previous is None:
            note = f"the earlier status record was unreadable ({problem}); earlier attempts and node time are not counted"
            self.log(f"{self.storage.url_of(self.path)}: {note}; this run continues (finished phases are known from their markers) and writes a new record")
            self.data["history_lost"] = note
            return
        for name, info in previous.get("phases", {}).items():
            if name in self.data["phases"] and isinstance(info, dict) and isinstance(info.get("steps", {}), dict):
                self.data["phases"][name] = {"steps": {}, **info}
        self.data["metrics"] = previous["metrics"] if isinstance(previous.get("metrics"), dict) else {}
        self.data["started_at"] = previous.get("started_at", self.data["started_at"])
        try:
            self.data["attempts"] = int(previous.get("attempts", 1)) + 1
            self.seconds_before = float(previous.get("node_seconds", 0.0))
        except (TypeError, ValueError):
            self.data["history_lost"] = "the earlier record's attempts or node time were malformed"
        self.data["resumes"] = previous.get("resumes", []) if isinstance(previous.get("resumes"), list) else []
        if previous.get("compile_cache"):
            self.data["compile_cache_history"] = previous.get("compile_cache_history", []) + [previous["compile_cache"]]

    def set(self, **fields) -> None:
        with self.lock:
            self.data.update(fields)
        self.write()

    def append(self, field: str, value) -> None:
        """Add one entry to a list field (resumes, ...)."""
        with self.lock:
            self.data.setdefault(field, []).append(value)
        self.write()

    def get(self, field: str):
        """A copy of one field, taken under the lock (the progress thread writes while the agent reads)."""
        import copy

        with self.lock:
            return copy.deepcopy(self.data.get(field))

    def phase(self, name: str, **fields) -> None:
        with self.lock:
            self.data["phases"][name].update(fields)
        self.write()

    def step(self, phase: str, step: str, **fields) -> None:
        with self.lock:
            self.data["phases"][phase]["steps"].setdefault(step, {}).update(fields)
        self.write()

    def progress(self, fields: dict, metrics: dict) -> None:
        with self.lock:
            self.data["progress"].update(fields)
            self.data["progress"]["at"] = now_iso()
            for name, value in metrics.items():
                self.data["metrics"][f"{self.data['phase']}.{self.data['step']}.{name}"] = value
        if time.monotonic() - self.last_write >= PROGRESS_WRITE_INTERVAL:
            self.write()

    @contextlib.contextmanager
    def beating(self, interval: float):
        """Rewrite the record at least every `interval` seconds while the block runs: the agent's heartbeat."""
        stop = threading.Event()
        with self.lock:
            self.data["heartbeat_sec"] = interval

        def loop() -> None:
            while not stop.wait(interval):
                self.write()

        thread = threading.Thread(target=loop, name="status-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=interval + 30)

    def write(self) -> None:
        with self.write_lock:
            self._write()

    def _write(self) -> None:
        with self.lock:
            self.data["updated_at"] = self.data["heartbeat_at"] = now_iso()
            self.data["node_seconds"] = round(self.seconds_before + time.monotonic() - self.attempt_started, 1)
            text = json.dumps(self.data, indent=2)
            self.last_write = time.monotonic()
        try:
            self.storage.write_text(self.path, text)
        except LeaseLost:
            return  # another agent writes this model now; the lease keeper has said so
        except Exception as e:  # noqa: BLE001 - status is best effort; the run itself must go on
            self.log(f"could not write the status file ({type(e).__name__}: {e}); will retry")
