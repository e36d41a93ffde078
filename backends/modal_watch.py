"""Watching a Modal run from any terminal: its state from the driver calls' results, its calls (the driver's own
result, else Modal's call graph), its logs from Modal, and cancelling every call.

What is learnt goes into the run's record (modal_record.py), so a finished run reads the same after Modal has
dropped its results (7 days) and `runner status` never asks Modal about it again. Logs: Modal's logs of each call
(`FunctionCall.logs`: the driver's lines and the stage containers' output, from image pull to exit, including
failures before the node agent starts); where Modal cannot give them, the node agent's log files in storage.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

from .base import RunInfo, State
from .modal_record import finish, info_from, merge_calls

LOG_POLL_SEC = 5.0
MAX_HANDOVERS = 100  # a run of 100 driver days is not a run, it is a loop
TERMINAL = {s.value for s in State if s.is_terminal()}


def refresh(store, record: dict, modal, handle: str) -> RunInfo:
    """The run's state now; the record is rewritten when something new was learnt."""
    try:
        state = State(record.get("state", "unknown"))
    except ValueError:
        state = State.UNKNOWN
    if state.is_terminal() or not record.get("drivers"):
        return info_from(record, handle)
    changed, unreachable = False, ""
    for _ in range(MAX_HANDOVERS):
        call_id = record["drivers"][-1]
        try:
            result = modal.FunctionCall.from_id(call_id).get(timeout=0)
        except TimeoutError:
            break  # still running
        except modal.exception.InputCancellation:
            finish(record, {"exit_code": 130, "reason": f"driver call {call_id} was cancelled"}, cancelled=True)
            changed = True
            break
        except (OSError, modal.exception.ConnectionError, modal.exception.ServiceError, modal.exception.InternalError,
                modal.exception.AuthError) as e:  # Modal could not be asked: say so, record nothing
            unreachable = f"Modal could not be asked ({type(e).__name__}: {e})"
            break
        except modal.exception.OutputExpiredError:
            record["reason"] = "Modal no longer keeps the driver's result (7 days); the phases in storage tell the rest"
            record["state"] = State.UNKNOWN.value
            changed = True
            break
        except Exception as e:  # noqa: BLE001 - the driver failed or was cancelled: its words are the reason
            finish(record, {"exit_code": 1, "reason": f"driver call {call_id}: {type(e).__name__}: {e}"})
            changed = True
            break
        if isinstance(result, dict) and result.get("handed_over_to"):
            merge_calls(record, result.get("calls", []))
            if result["handed_over_to"] not in record["drivers"]:
                record["drivers"].append(result["handed_over_to"])
            changed = True
            continue
        finish(record, result if isinstance(result, dict) else {"exit_code": 1, "reason": f"unexpected driver result {result!r}"})
        changed = True
        break
    if not State(record["state"]).is_terminal() and not unreachable:
        changed = discover_calls(record, modal) or changed
    if changed:
        store.write(record)
    info = info_from(record, handle)
    if unreachable:
        info.detail += f"; {unreachable}"
    return info


def discover_calls(record: dict, modal) -> bool:
    """Stage calls the drivers spawned, from Modal's call graph (best effort: the graph may lag or be cut)."""
    found = []
    for driver_call in record["drivers"]:
        try:
            graph = modal.FunctionCall.from_id(driver_call).get_call_graph()
        except Exception:  # noqa: BLE001 - the graph is a convenience; the driver's own result is the record
            continue
        stack = list(graph)
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.function_call_id in record["drivers"]:
                continue
            if node.function_name.endswith("driver"):
                record["drivers"].append(node.function_call_id)  # a hand-over not yet seen in a result
                continue
            found.append({"call_id": node.function_call_id, "function": node.function_name, "status": node.status.name.lower()})
    return merge_calls(record, found)


def known_calls(record: dict) -> list[tuple[str, str]]:
    """(call id, what) for every call of the run: drivers first, then stages."""
    calls = [(c, "driver") for c in record.get("drivers", [])]
    calls += [(c, info.get("stage") or info.get("function") or "stage") for c, info in (record.get("calls") or {}).items()]
    return calls


def cancel_all(store, record: dict, modal) -> list[tuple[str, str]]:
    """Cancel every call of the run (terminating their containers); returns what was cancelled."""
    discover_calls(record, modal)
    stopped = []
    for call_id, what in known_calls(record):
        try:
            modal.FunctionCall.from_id(call_id).cancel(terminate_containers=True)
            stopped.append((call_id, what))
        except Exception as e:  # noqa: BLE001 - one call already gone must not keep the others running
            stopped.append((call_id, f"{what}: not cancelled, {type(e).__name__}: {e}"))
    if record.get("state") not in TERMINAL:
        finish(record, {"exit_code": 130, "reason": "cancelled with `runner down`"}, cancelled=True)
    record["cancelled"] = [c for c, _ in stopped]
    store.write(record)
    return stopped


def _entries(modal, call_id: str, since: datetime | None, tail: int | None):
    logs = modal.FunctionCall.from_id(call_id).logs
    return list(logs.fetch(since=since)) if since is not None else list(logs.tail(tail or 10000))


def logs(store, record: dict, modal, handle: str, follow: bool = False, tail: int | None = None,
         poll_s: float = LOG_POLL_SEC, sleep=time.sleep) -> Iterator[str]:
    """Modal's logs of every call of the run in time order; with `follow`, new lines until the run ends."""
    seen: dict[str, datetime] = {}
    first = True
    while True:
        info = refresh(store, record, modal, handle)
        batch = []
        try:
            for call_id, _ in known_calls(record):
                since = seen.get(call_id)
                for entry in _entries(modal, call_id, since + timedelta(microseconds=1) if since else None, None if follow and not first else tail):
                    batch.append(entry)
                    seen[call_id] = max(seen.get(call_id, entry.timestamp), entry.timestamp)
        except Exception as e:  # noqa: BLE001 - no Modal logs (permissions, API): the node's own logs from storage
            yield f"[runner] Modal's logs are not available ({type(e).__name__}: {e}); the node agent's logs from storage follow\n"
            yield from node_logs(store, record["run_id"], tail)
            return
        batch.sort(key=lambda entry: entry.timestamp)
        if first and tail is not None:
            batch = batch[-tail:]
        for entry in batch:
            yield entry.message if entry.message.endswith("\n") else entry.message + "\n"
        first = False
        if not follow or info.state.is_terminal():
            return
        sleep(poll_s)
        for call_id in [c for c, _ in known_calls(record) if c not in seen]:
            seen[call_id] = datetime.fromtimestamp(0, timezone.utc)  # a call found later: all of its lines


def node_logs(store, run_id: str, tail: int | None = None) -> Iterator[str]:
    """The node agent's phase logs from storage (mirrored every 15 s; on a Volume, committed with it)."""
    order = ["data", "tokenizer", "base", "mid", "sft", "rl", "report"]
    folder = f"_runner/runs/{run_id}/logs"
    names = sorted(store.storage.find(folder), key=lambda n: order.index(n[:-4]) if n[:-4] in order else len(order))
    lines = [ln for name in names for ln in store.storage.read_text(f"{folder}/{name}").splitlines(keepends=True)]
    yield from (lines[-tail:] if tail is not None else lines)
