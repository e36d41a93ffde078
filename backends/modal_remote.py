"""The code that runs inside Modal containers: one stage of a run, and the driver that calls the stages in order.

It imports only the standard library and `modal`, because Modal's own Python in the image (added by
`add_python`) has nothing else; it drives the runner through its command line (`runner node run`, on PATH in the
image). The backend registers these functions with `serialized=True` (their timeouts and GPUs come from the
plan), so keep them free of imports from this repository.

Volume commits: the node agent writes storage on the mounted Volume as a plain folder, so the stage commits the
Volume every `commit_every_s` while the node runs (a checkpoint the node has sealed becomes durable within that
time, even if the machine is preempted next) and once more after the node exits. Modal also commits in the
background; the explicit commits make the bound ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

EXIT_INTERRUPTED = 130
RUNS_DICT = "nanochat-runner-runs"  # same as backends.modal_plan.RUNS_DICT (no import: see the docstring)


def say(message: str) -> None:
    print(f"[runner/modal] {message}", flush=True)


class Committer:
    """Commits a mounted Volume now and then, and on demand; a failed commit is reported, never fatal."""

    def __init__(self, volume_name: str | None, every_s: float):
        self.volume, self.every_s, self.stop = None, every_s, threading.Event()
        if volume_name:
            import modal

            self.volume = modal.Volume.from_name(volume_name)
            threading.Thread(target=self._loop, name="volume-commit", daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            self.commit("periodic")

    def commit(self, why: str) -> None:
        if self.volume is None:
            return
        try:
            self.volume.commit()
        except Exception as e:  # noqa: BLE001 - the next commit (or Modal's background one) catches up
            say(f"volume commit ({why}) failed: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.stop.set()
        self.commit("after the node agent")


def node_command(payload: dict, args: list[str]) -> list[str]:
    options = [a for o in payload["storage_options"] for a in ("--storage-option", o)]
    return ["runner", "node", "run", "--storage", payload["storage"], "--run-id", payload["run_id"], *options, *args]


def stage_args(payload: dict, record) -> list[str]:
    """--from/--only restart a phase; they apply to the first attempt only, never to a retry after preemption."""
    if payload["node_args"] == payload["continue_args"] or record is None:
        return payload["node_args"]
    key = f"{payload['run_id']}/forced/{payload['stage']}"
    if record.get(key):
        return payload["continue_args"]
    record[key] = True
    return payload["node_args"]


def run_stage(payload: dict, first_call: bool = True) -> dict:
    """Run `runner node run` for one stage; SIGTERM it after `segment_s` (then the caller calls again)."""
    import modal

    record = modal.Dict.from_name(RUNS_DICT, create_if_missing=True) if first_call else None
    args = stage_args(payload, record) if first_call else payload["continue_args"]
    env = {**os.environ, "RUNNER_PLAN_JSON": payload["plan_json"]}
    committer = Committer(payload.get("volume"), payload["commit_every_s"])
    argv = node_command(payload, args)
    say(f"stage {payload['stage']}: {' '.join(argv)}")
    proc = subprocess.Popen(argv, env=env)
    segment_ended = threading.Event()

    def end_segment() -> None:
        segment_ended.set()
        say(f"stage {payload['stage']}: {payload['segment_s'] / 3600:.1f} h segment over; stopping the node agent to continue in a new call")
        proc.send_signal(signal.SIGTERM)

    timer = threading.Timer(payload["segment_s"], end_segment) if payload["segment_s"] else None
    if timer:
        timer.start()
    try:
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # this call was cancelled or timed out: let the node agent stop its phase
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        committer.close()
    return {"exit_code": code, "continue": segment_ended.is_set() and code == EXIT_INTERRUPTED}


def drive(run: dict) -> dict:
    """Call each stage in order (segments again until done); stop at the first failing stage. Near Modal's 24 h
    cap the driver hands over to a fresh call of itself and returns its id."""
    import modal

    started, last = time.monotonic(), 0
    record = modal.Dict.from_name(RUNS_DICT, create_if_missing=True)
    for payload in run["stages"]:
        done_key = f"{run['run_id']}/done/{payload['stage']}"
        if record.get(done_key):
            continue
        function = modal.Function.from_name(run["app_name"], payload["stage"])
        first = True
        while True:
            if time.monotonic() - started + payload["timeout_s"] > run["driver_timeout_s"] - 600:
                call = modal.Function.from_name(run["app_name"], "driver").spawn(run)
                _update(record, run["run_id"], call_id=call.object_id)
                say(f"driver: handing over to {call.object_id} before Modal's 24 h cap")
                return {"continued_as": call.object_id}
            _update(record, run["run_id"], stage=payload["stage"])
            call = function.spawn(payload, first)
            try:
                result = call.get()
            except BaseException:  # cancelled (runner down) or failed: do not leave the GPU stage running
                call.cancel(terminate_containers=True)
                raise
            first = False
            if not result["continue"]:
                break
        if result["exit_code"] not in (0, 3):
            return {"exit_code": result["exit_code"], "stage": payload["stage"]}
        record[done_key] = True
        last = result["exit_code"]
    return {"exit_code": last}


def _update(record, run_id: str, **fields) -> None:
    entry = dict(record.get(run_id) or {})
    entry.update(fields)
    record[run_id] = entry


def stage_entry(payload: dict, first_call: bool = True) -> dict:
    return run_stage(payload, first_call)


def driver_entry(run: dict) -> dict:
    return drive(run)
