"""Live status of a run, from its status file in storage: where it is, how fast, what it has cost, and how old
its newest complete checkpoint is. Backends use `summarize` for `runner status` and the progress line of
`runner up`; `--json` prints the same dictionary. `summarize_all` is `runner ls`: every run in a storage, a torn
status record flagged on its own row. A run whose agent stopped beating (killed with -9, machine gone) shows as
"lost (no heartbeat since ...)" instead of "running" forever."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from .checkpoints import stored_checkpoints
from .estimate import prices
from .storage import Storage

FINAL_STATES = {"succeeded", "succeeded_with_eval_failures", "failed", "interrupted"}
LOST_AFTER_HEARTBEATS = 4  # missed heartbeats before a live-looking run counts as lost


def _age_seconds(iso: str | None) -> float | None:
    if not iso or not isinstance(iso, str):
        return None
    try:
        then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return max(0.0, time.time() - then.timestamp())


def shown_state(status: dict) -> str:
    """The state to show: the recorded one, or "lost (no heartbeat since ...)" when a run that should be beating
    has not for several of its heartbeat intervals (only records written with a heartbeat are judged)."""
    state = str(status.get("state", "unknown"))
    beat, interval = status.get("heartbeat_at"), status.get("heartbeat_sec")
    if state in FINAL_STATES or not isinstance(interval, (int, float)) or interval <= 0:
        return state
    age = _age_seconds(beat)
    if age is not None and age > LOST_AFTER_HEARTBEATS * interval:
        return f"lost (no heartbeat since {beat}; was {state})"
    return state


def dollars_so_far(status: dict, backend: str | None) -> dict[str, float]:
    """Node wall time × GPUs × price per GPU-hour, for the run's backend (or every priced backend)."""
    table = prices()["dollars_per_gpu_hour"]
    backends = [backend] if backend in table else list(table)
    hours = float(status.get("node_seconds", 0.0)) / 3600
    return {b: round(hours * status.get("gpus", 1) * table[b].get(status.get("gpu_type", "H100"), 0.0), 2) for b in backends}


def newest_checkpoint(storage: Storage, plan: dict | None) -> dict | None:
    """Step and age of the newest complete checkpoint of any step that writes checkpoints (base training)."""
    if not plan:
        return None
    newest = None
    for phase in plan["phases"]:
        for step in phase["steps"]:
            if step.get("checkpoints"):
                complete = stored_checkpoints(storage, step["checkpoints"]).complete
                if complete:
                    number = max(complete)
                    newest = {"step": number, "age_seconds": _age_seconds(complete[number].get("written_at")), "folder": step["checkpoints"]}
    return newest


def summarize(storage: Storage, status: dict, plan: dict | None) -> dict:
    progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
    summary = {
        "run_id": status["run_id"],
        "state": shown_state(status),
        "model": status.get("model"),
        "recipe": status.get("recipe"),
        "gpus": status.get("gpus"),
        "phase": status.get("phase"),
        "step": status.get("step"),
        "progress": {k: progress[k] for k in ("step", "total", "percent", "tok_per_sec", "mfu", "eta_min") if k in progress},
        "dollars": dollars_so_far(status, (plan or {}).get("backend")),
        "node_hours": round(float(status.get("node_seconds", 0.0) or 0.0) / 3600, 3),
        "updated_seconds_ago": _age_seconds(status.get("updated_at")),
        "newest_checkpoint": newest_checkpoint(storage, plan),
        "compile_cache": status.get("compile_cache"),
        "eval_failures": status.get("eval_failures", []),
        "attempts": status.get("attempts", 1),
    }
    return summary


def summarize_all(storage: Storage) -> list[dict]:
    """A summary of every run in the storage, newest first; a run whose status record is unreadable gets a row of
    its own with state "unreadable" and the reason, and the others are shown as usual."""
    from .runlogs import BadRecord, list_runs, load_run

    rows = []
    for run_id in list_runs(storage):
        try:
            status, plan = load_run(storage, run_id)
            summary = summarize(storage, status, plan)
        except BadRecord as e:
            rows.append({"run_id": run_id, "state": "unreadable", "problem": e.message.split("\nTo fix:")[0],
                         "last_phase": None, "model": None, "dollars": {}, "started_at": None})
            continue
        phases = status["phases"]
        last = next((n for n, info in reversed(list(phases.items())) if isinstance(info, dict) and info.get("state") not in ("pending",)), None)
        rows.append({**summary, "last_phase": last, "started_at": status.get("started_at")})
    rows.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return rows


def _minutes(value: float) -> str:
    hours, minutes = divmod(int(round(value)), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def format_line(summary: dict) -> str:
    """One line for a terminal: `d20 base/base_train 1234/21400 (5.8%) | 1.23M tok/s | MFU 48.1 | ETA 2h31m | ...`."""
    parts = [f"{summary['run_id']} [{summary['state']}]"]
    if summary.get("phase"):
        parts.append(f"{summary['phase']}/{summary.get('step') or '-'}")
    p = summary["progress"]
    if "step" in p:
        total = f"/{p['total']}" if "total" in p else ""
        pct = f" ({p['percent']:.1f}%)" if "percent" in p else ""
        parts.append(f"step {p['step']}{total}{pct}")
    if "tok_per_sec" in p:
        parts.append(f"{p['tok_per_sec'] / 1e6:.2f}M tok/s" if p["tok_per_sec"] >= 1e5 else f"{p['tok_per_sec']:,} tok/s")
    if "mfu" in p:
        parts.append(f"MFU {p['mfu']:.1f}")
    if "eta_min" in p:
        parts.append(f"ETA {_minutes(p['eta_min'])}")
    dollars = summary["dollars"]
    if len(dollars) == 1:
        parts.append(f"${next(iter(dollars.values())):,.2f} so far")
    else:
        parts.append("so far " + ", ".join(f"{b} ${d:,.2f}" for b, d in dollars.items()))
    ckpt = summary.get("newest_checkpoint")
    if ckpt and ckpt.get("age_seconds") is not None:
        parts.append(f"checkpoint {ckpt['step']} {_minutes(ckpt['age_seconds'] / 60)} ago")
    return " | ".join(parts)
