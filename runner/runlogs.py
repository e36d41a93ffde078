"""Reading a run back from storage: its status, plan and phase logs, and the series and metrics in the logs.

Shared by `runner status`, `runner report` and `runner ls`; everything here reads, nothing writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import RunnerError
from .progress import parse_line
from .status import run_dir
from .storage import RUNNER_DIR, Storage

HEADER = re.compile(r"^==== (\w+)/(\w+): ")
CORE_CSV = re.compile(r"^CORE\s*,.*,\s*([0-9.]+)\s*$")  # seed base_eval's results table


@dataclass
class Series:
    """Per-step values of one training step (e.g. base/base_train)."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    tok_per_sec: list[tuple[int, float]] = field(default_factory=list)
    val_bpb: list[tuple[int, float]] = field(default_factory=list)


class BadRecord(RunnerError):
    """A run's status.json in storage cannot be read: torn by a cut write, or edited by hand."""


STATUS_FIELDS = {"run_id": str, "state": str, "phases": dict}  # what every reader relies on


def list_runs(storage: Storage) -> list[str]:
    names = {path.split("/")[0] for path in storage.find(f"{RUNNER_DIR}/runs") if path.endswith("/status.json")}
    return sorted(names)


def parse_status(text: str) -> tuple[dict | None, str]:
    """(status, "") for a usable status record, else (None, what is wrong with it)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        return None, f"not JSON ({e}; a cut write leaves this)"
    if not isinstance(data, dict):
        return None, f"not a JSON object but {type(data).__name__}"
    wrong = [name for name, kind in STATUS_FIELDS.items() if not isinstance(data.get(name), kind)]
    if wrong:
        return None, f"missing or malformed field(s): {', '.join(wrong)}"
    return data, ""


def read_status(storage: Storage, run_id: str) -> dict | None:
    """The run's status record; None when there is none; BadRecord when it is there but unusable."""
    rel = f"{run_dir(run_id)}/status.json"
    try:
        text = storage.read_text(rel)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        text = f"<{e}>"
    status, problem = parse_status(text)
    if status is None:
        raise BadRecord(
            f"The status record of run {run_id!r} is unreadable: {problem} ({storage.url_of(rel)}).",
            [f"Run that run's node command again (`runner node run ... --run-id {run_id}`): it continues and writes a whole record.",
             f"Or delete {storage.url_of(rel)} if the run is gone; the other runs are not affected."],
        )
    return status


def read_json(storage: Storage, rel: str) -> dict | None:
    try:
        return json.loads(storage.read_text(rel))
    except (FileNotFoundError, ValueError):
        return None


def load_run(storage: Storage, run_id: str) -> tuple[dict, dict | None]:
    """(status, plan or None) of one run; RunnerError when it is not there, BadRecord when its status is torn."""
    status = read_status(storage, run_id)
    if status is None:
        known = list_runs(storage)
        raise RunnerError(
            f"No run {run_id!r} in {storage.url}.",
            [f"Runs there: {', '.join(known) if known else 'none'} (`runner ls {storage.url}`)."],
        )
    plan = read_json(storage, f"{run_dir(run_id)}/plan.json")
    return status, plan if isinstance(plan, dict) and isinstance(plan.get("phases"), list) else None


def phase_logs(storage: Storage, run_id: str) -> dict[str, dict[str, list[str]]]:
    """{phase: {step: lines}} from the logs in storage, split at the runner's `==== phase/step:` headers."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in storage.find(f"{run_dir(run_id)}/logs"):
        if not name.endswith(".log"):
            continue
        phase = name.removesuffix(".log")
        current = "_"
        for line in storage.read_text(f"{run_dir(run_id)}/logs/{name}").splitlines():
            match = HEADER.match(line)
            if match:
                current = match.group(2)
            out.setdefault(phase, {}).setdefault(current, []).append(line)
    return out


def training_series(lines: list[str]) -> Series:
    series = Series()
    for line in lines:
        progress, metrics = parse_line(line)
        if "step" in progress and "loss" in progress:
            series.loss.append((progress["step"], progress["loss"]))
        if "step" in progress and "tok_per_sec" in progress:
            series.tok_per_sec.append((progress["step"], progress["tok_per_sec"]))
        if "val_bpb" in metrics:
            found = re.match(r"^Step (\d+)", line.strip())
            if found:
                series.val_bpb.append((int(found.group(1)), metrics["val_bpb"]))
    return series


def step_metrics(lines: list[str]) -> dict[str, float]:
    """The last value of every metric a step printed (CORE, val bpb, per-task accuracies, ChatCORE)."""
    found: dict[str, float] = {}
    for line in lines:
        _, metrics = parse_line(line)
        found.update(metrics)
        csv = CORE_CSV.match(line.strip())
        if csv:
            found["core"] = float(csv.group(1))
    return found
