"""A submitted Slurm job found again from its id alone: its state (scontrol, else sacct), its output, stopping it.

Everything is bash run on the submit host (this machine, or the login node over SSH) through a `shell` with
`script(text, timeout) -> (code, output)` and `stream(command) -> lines`, as detached.py does for SSH runs.

The submit folder `~/.nanochat-runner/slurm/` on the submit host holds, per job, `<id>.json` (the run id, storage
and start time `runner status` shows) and the job's output `nanochat-<id>.out`, which sbatch appends to across
requeues. The compute nodes write that output, so the folder must be on a filesystem they share with the login
node (home folders are, on nearly every cluster).
"""

from __future__ import annotations

import json
from typing import Iterator

from .base import BackendError, RunInfo, State, state_from_exit
from .detached import parse_lines, q

SUBMIT_DIR = "$HOME/.nanochat-runner/slurm"
UNANSWERED_LIMIT_SEC = 180  # following stops when the controller stays silent this long (the job may go on)

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "RESIZING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
FAILED_STATES = {"TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


def output_path(job_id: str) -> str:
    return f"{SUBMIT_DIR}/nanochat-{job_id}.out"


def describe_script(job_id: str) -> str:
    d = SUBMIT_DIR
    return "\n".join([
        f'd="{d}"; id={q(job_id)}',
        'echo "meta=$(tr -d "\\n" < "$d/$id.json" 2>/dev/null)"',
        'job=$(scontrol show job "$id" -o 2>/dev/null | head -n 1)',
        'if [[ -n $job ]]; then echo "job=$job"; else',
        '  echo "acct=$(sacct -j "$id" -X -n -P -o State,ExitCode,Start,End,NodeList 2>/dev/null | head -n 1)"',
        "fi",
        "true",
    ]) + "\n"


def _exit_code(text: str) -> int | None:
    """Slurm's ExitCode "X:Y" (X: the script's exit code, Y: the signal that ended it)."""
    code, _, signal = (text or "").partition(":")
    if not code.isdigit():
        return None
    return 128 + int(signal) if signal.isdigit() and int(signal) else int(code)


def _state(slurm_state: str, exit_code: int | None) -> State:
    word = slurm_state.split()[0].upper() if slurm_state else ""
    if word in PENDING_STATES:
        return State.PENDING
    if word in RUNNING_STATES:
        return State.RUNNING
    if word == "COMPLETED":
        return State.SUCCEEDED
    if word.startswith("CANCELLED"):
        return State.CANCELLED
    if word == "FAILED":
        return state_from_exit(exit_code if exit_code is not None else 1)
    if word in FAILED_STATES:
        return State.FAILED
    return State.UNKNOWN


def describe(shell, job_id: str, handle: str, where: str) -> RunInfo | None:
    """The job's state, or None when neither Slurm nor the submit folder knows the job."""
    _, out = shell.script(describe_script(job_id), timeout=60)
    facts = parse_lines(out)
    meta = json.loads(facts.get("meta") or "{}")
    job = dict(token.split("=", 1) for token in facts.get("job", "").split() if "=" in token)
    if job:
        slurm_state, exit_code = job.get("JobState", ""), _exit_code(job.get("ExitCode", ""))
        started, finished, nodes = job.get("StartTime", ""), job.get("EndTime", ""), job.get("NodeList", "")
        reason, restarts = job.get("Reason", "None"), job.get("Restarts", "0")
    elif facts.get("acct"):
        slurm_state, code_text, started, finished, nodes = (facts["acct"].split("|") + [""] * 5)[:5]
        exit_code, reason, restarts = _exit_code(code_text), "None", "0"
    elif meta:
        return RunInfo(handle=handle, run_id=meta.get("run_id", ""), state=State.UNKNOWN, started_at=meta.get("started_at", ""),
                       storage=meta.get("storage", ""), detail=f"job {job_id} on {where}: Slurm no longer lists it (no accounting); its output: {output_path(job_id)}")
    else:
        return None
    state = _state(slurm_state, exit_code)
    detail = f"job {job_id} {slurm_state} on {where}" + (f", nodes {nodes}" if nodes and nodes != "(null)" else "")
    detail += (f", reason {reason}" if reason not in ("None", "") else "") + (f", requeued {restarts}×" if restarts not in ("0", "") else "")
    return RunInfo(handle=handle, run_id=meta.get("run_id") or job.get("JobName", "").removeprefix("nanochat-"), state=state,
                   exit_code=exit_code if state.is_terminal() else None, started_at=meta.get("started_at") or started,
                   finished_at=finished if state.is_terminal() and finished not in ("Unknown", "None") else "",
                   storage=meta.get("storage", ""), detail=detail)


def list_ids(shell) -> list[str]:
    _, out = shell.script(f'for f in "{SUBMIT_DIR}"/*.json; do [[ -f $f ]] && basename "$f" .json; done; true\n', timeout=60)
    return [line for line in out.split() if line.isdigit()]


def logs_command(job_id: str, follow: bool, tail: int | None) -> str:
    """Print the job's output; with `follow`, keep printing what the nodes append until the job has left the queue
    (a requeued job stays in it, so its next attempt is followed too)."""
    f = output_path(job_id)
    first = f"tail -n {int(tail)}" if tail is not None else "cat"
    if not follow:
        return f'[[ -f "{f}" ]] && {first} < "{f}"; true'
    return "\n".join([
        f'f="{f}"; id={q(job_id)}; off=0; unanswered=0',
        f'if [[ -f $f ]]; then off=$(stat -c %s "$f"); head -c "$off" "$f" | {first}; fi',  # what the file held then, once
        "while :; do",
        '  st=$(squeue -h -j "$id" -o %T 2>&1); rc=$?',
        '  ended=0; { [[ $rc == 0 && -z $st ]] || [[ $st == *"Invalid job id"* ]]; } && ended=1',
        '  if [[ $rc != 0 && $ended == 0 ]]; then unanswered=$((unanswered + 1)); else unanswered=0; fi',
        f'  if (( unanswered >= {UNANSWERED_LIMIT_SEC} )); then echo "[runner] Slurm has not answered squeue for {UNANSWERED_LIMIT_SEC} s: stopped following job $id ($st)"; exit 1; fi',
        '  if [[ -f $f ]]; then size=$(stat -c %s "$f"); if (( size > off )); then tail -c +$((off + 1)) "$f" | head -c $((size - off)); off=$size; fi; fi',
        "  (( ended )) && break",
        "  sleep 1",
        "done",
    ])


def cancel_script(job_id: str, grace_sec: float) -> str:
    """SIGTERM to the node agents (the job's steps; they stop their phase), --grace seconds for them to end,
    then scancel, which ends the job, and wait (bounded) until it has left the queue."""
    grace = max(1, int(grace_sec))
    return "\n".join([
        f"id={q(job_id)}",
        'active() { st=$(squeue -h -j "$id" -o %T 2>/dev/null); [[ -n $st ]]; }',
        'if active && [[ $st != PENDING ]]; then',
        '  scancel --signal=TERM "$id" 2>&1 || true',
        f"  for _ in $(seq {grace * 2}); do active || break; sleep 0.5; done",
        "fi",
        'active && scancel "$id" 2>&1',  # past the grace, or still queued (nothing runs yet)
        "for _ in $(seq 240); do active || break; sleep 0.5; done",
        "true",
    ]) + "\n"


def remove_script(job_id: str) -> str:
    return f'rm -f "{SUBMIT_DIR}/{job_id}.json" "{output_path(job_id)}"\n'


def require(info: RunInfo | None, job_id: str, where: str) -> RunInfo:
    if info is None:
        raise BackendError(f"No job {job_id} of a run on {where}: Slurm does not list it and ~/.nanochat-runner/slurm has no record of it.",
                           ["`runner status --backend slurm` lists the runs submitted from there.", "A run removed with `runner down` is gone (its storage is not)."])
    return info


def stream_logs(shell, job_id: str, follow: bool, tail: int | None) -> Iterator[str]:
    yield from shell.stream(logs_command(job_id, follow, tail))
