"""Fault scenarios about who writes and what is accepted (rows 2, 6, 8, 11, 13 and 15 of the robustness issue): two
agents on one model, bad run ids, a plan with a flag the pin lacks, a torn run record, malformed input, and a run
killed with -9 that must show as lost. Setups as in tests/test_lease.py, test_refusals.py, test_records.py."""

from __future__ import annotations

import json
import signal
import sys
import time

from tests.bench.fault_lab import Lab, Outcome, Scenario, clear_error, wait_for
from tests.harness import make_double, preseed_files, read_calls, runner, seed_s3, smoke_plan, start_node

EXPECTED_STEPS = {5 * i for i in range(1, 9)}  # smoke_plan: 40 iterations, a checkpoint every 5
LEASE = "_runner/leases/d4.json"


def _training_started(calls) -> bool:
    return any(c["module"] == "scripts.base_train" for c in read_calls(calls))


def two_agents_at_once(where: str):
    """Two node agents on one storage and model, started together (as test_lease.py does, each with its own scratch)."""

    def scenario(lab: Lab) -> Outcome:
        import os

        from runner.checkpoints import stored_checkpoints
        from runner.storage import open_storage

        if where == "s3":
            url = lab.bucket()
            seed_s3(url, lab.server.storage_options(), lab.tmp)
            extra = lab.server.env()
            os.environ.update(extra)
        else:
            url, extra = str(lab.tmp / "storage"), {}
            preseed_files(lab.tmp / "storage")
        plan = smoke_plan(lab.tmp)
        procs, started = {}, time.monotonic()
        for name in ("agent-a", "agent-b"):
            env = lab.env(**extra, NANOCHAT_DOUBLE_CALLS=lab.tmp / f"calls-{name}.jsonl", RUNNER_SCRATCH=lab.tmp / f"scratch-{name}",
                          NANOCHAT_DOUBLE_STEP_SEC="0.2")
            double = make_double(lab.tmp / name)
            procs[name] = start_node(plan, url, double, env, lab.tmp / f"{name}.log", "--heartbeat-sec", "1", "--run-id", name)
        ended: dict[str, float] = {}
        wait_for(lambda: ended.update({n: time.monotonic() - started for n, p in procs.items() if n not in ended and p.poll() is not None})
                 or len(ended) == 2, timeout=240, poll=0.05)
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        codes = {n: p.returncode for n, p in procs.items()}
        winners = [n for n, c in codes.items() if c == 0]
        if len(winners) != 1:
            return Outcome(False, True, float("nan"), f"exit codes {codes}")
        winner, loser = winners[0], ("agent-b" if winners[0] == "agent-a" else "agent-a")
        said = (lab.tmp / f"{loser}.log").read_text()
        refused = (codes[loser] == 8 and f"is being written by run {winner}" in said and "--steal" in said and "Traceback" not in said
                   and not read_calls(lab.tmp / f"calls-{loser}.jsonl") and _training_started(lab.tmp / f"calls-{winner}.jsonl"))
        storage = open_storage(url, check=False)
        stored = stored_checkpoints(storage, "base_checkpoints/d4")
        status = json.loads(storage.read_text(f"_runner/runs/{winner}/status.json"))
        lost = (set(stored.complete) != EXPECTED_STEPS or bool(stored.incomplete) or status["state"] != "succeeded"
                or bool(storage.find(f"_runner/runs/{loser}")) or bool(storage.find(LEASE)))
        return Outcome(refused, lost, ended[loser], f"{winner} trained, {loser} refused (exit {codes[loser]})")

    return scenario


def bad_run_ids(lab: Lab) -> Outcome:
    """`--run-id '../../x'` (and `a/b`, a newline, 300 characters): refused before anything is written anywhere."""
    lab.double()
    before = sorted(p.relative_to(lab.tmp).as_posix() for p in lab.tmp.rglob("*"))
    results, slowest = [], 0.0
    for run_id in ("../../x", "a/b", "line\nbreak", "x" * 300):
        args = ["node", "run", "--storage", str(lab.tmp / "store" / "storage"), "--model", "smoke", "--nanochat-dir",
                str(lab.tmp / "nanochat-seed"), "--python", sys.executable, "--run-id", run_id]
        started = time.monotonic()
        results.append(runner(args, lab.env()))
        slowest = max(slowest, time.monotonic() - started)
    after = sorted(p.relative_to(lab.tmp).as_posix() for p in lab.tmp.rglob("*"))
    written = [p for p in after if p not in before]
    clear = all(r.code == 1 and clear_error(r, "cannot name a folder in storage") for r in results)
    return Outcome(clear and not written, bool(written) or (lab.tmp / "x").exists(), slowest,
                   f"written: {written[:3]}" if written else "4 ids refused, nothing written")


def plan_with_unknown_flag(lab: Lab) -> Outcome:
    """A plan (`--plan` file and RUNNER_PLAN_JSON) whose base_train has a flag the pin lacks: refused before any phase."""
    plan = json.loads(runner(["plan", "--model", "smoke", "--json"], lab.env()).output)
    plan["phases"][2]["steps"][0]["args"].append("--no_such_flag=1")
    (lab.tmp / "plan.json").write_text(json.dumps(plan))
    store = lab.tmp / "storage"
    results, slowest = [], 0.0
    for extra, env in ((["--plan", str(lab.tmp / "plan.json")], lab.env()), ([], lab.env(RUNNER_PLAN_JSON=json.dumps(plan)))):
        args = ["node", "run", "--storage", str(store), "--nanochat-dir", str(lab.double()), "--python", sys.executable, *extra]
        started = time.monotonic()
        results.append(runner(args, env))
        slowest = max(slowest, time.monotonic() - started)
    ran = read_calls(lab.tmp / "calls.jsonl")
    clear = all(r.code == 1 and "scripts.base_train has no option --no_such_flag" in r.output and "Traceback" not in r.output
                for r in results)
    return Outcome(clear and not ran and not store.exists(), store.exists(), slowest,
                   f"{len(ran)} nanochat step(s) ran first" if ran else "refused before data and tokenizer")


def torn_status_record(lab: Lab) -> Outcome:
    """A half-written status.json beside a good run: `runner ls` shows the good one and flags the torn one."""
    store = lab.tmp / "storage"
    preseed_files(store)
    first, _ = lab.node(str(store), lab.env(), "--only", "data")
    good = (store / "_runner/runs/bench/status.json").read_text()
    (store / "_runner/runs/torn").mkdir()
    (store / "_runner/runs/torn/status.json").write_text(good[: len(good) // 2])
    (store / "_runner/runs/empty").mkdir()
    (store / "_runner/runs/empty/status.json").write_text("{}")  # whole JSON, but no run record
    started = time.monotonic()
    listed = runner(["ls", str(store)], lab.env())
    seconds = time.monotonic() - started
    rows = {line.split()[0]: line for line in listed.output.splitlines() if line.strip() and not line.startswith(("run ", "note:"))}
    shown = "succeeded" in rows.get("bench", "")
    flagged = all("unreadable" in rows.get(name, "") and f"The status record of run '{name}' is unreadable" in listed.output
                  for name in ("torn", "empty"))
    return Outcome(first.code == 0 and listed.code == 0 and shown and flagged, not shown, seconds,
                   "" if flagged else listed.output[-150:].replace("\n", " "))


def malformed_input(lab: Lab) -> Outcome:
    """A checkpoint manifest `{}` and `null`, `--heartbeat-sec -1`, `--recipe ../x.toml`: each a clear error or handled,
    never a traceback. The manifests are those of a base run that crashed at step 17 (as in tests/test_resume.py)."""
    store = lab.tmp / "storage"
    preseed_files(store)
    plan = smoke_plan(lab.tmp, iterations=30, save_every=5)
    crashed, _ = lab.node(str(store), lab.env(NANOCHAT_DOUBLE_FAIL_AT_STEP="17"), plan=plan)
    folder = store / "base_checkpoints/d4"
    problems, slowest = [], 0.0
    if crashed.code != 4 or not (folder / "manifest_000015.json").exists():
        return Outcome(False, False, float("nan"), "the crashed run to start from did not crash at step 17")
    for name, bad in (("null", "null"), ("empty", "{}")):
        (folder / "manifest_000015.json").write_text(bad)
        result, seconds = lab.node(str(store), lab.env(RUNNER_SCRATCH=lab.tmp / f"scratch-{name}"), "--only", "base", plan=plan)
        slowest = max(slowest, seconds)
        if "Traceback" in result.output or (result.code != 0 and "To fix:" not in result.output):
            problems.append(f"manifest {bad}: exit {result.code}, {result.output.strip().splitlines()[-1][:60]!r}")
        if result.code == 0:
            break  # the run finished over the bad manifest: the next case has no crashed run to resume
    for args, words in ((["--model", "smoke", "--heartbeat-sec", "-1"], "--heartbeat-sec"), (["--recipe", "../x.toml"], "Unknown recipe")):
        started = time.monotonic()
        result = runner(["node", "run", "--storage", str(lab.tmp / "other"), "--nanochat-dir", str(lab.double()), "--python", sys.executable,
                         *args], lab.env())
        slowest = max(slowest, time.monotonic() - started)
        if result.code == 0 or "Traceback" in result.output or words not in result.output:
            problems.append(f"{args[-2]} {args[-1]}: exit {result.code}")
    return Outcome(not problems, False, slowest, "; ".join(problems) or "all clear, no traceback")


def killed_run_shows_lost(lab: Lab) -> Outcome:
    """kill -9 of an agent beating every second: seconds from the kill until `runner ls` says "lost (no heartbeat since …)"."""
    store = lab.tmp / "storage"
    preseed_files(store)
    env = lab.env(NANOCHAT_DOUBLE_STEP_SEC="1")
    agent = start_node(smoke_plan(lab.tmp), str(store), lab.double(), env, lab.tmp / "run.log", "--heartbeat-sec", "1")
    try:
        if not wait_for(lambda: _training_started(lab.tmp / "calls.jsonl"), agent, timeout=120):
            return Outcome(False, False, float("nan"), "training never started")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    killed = time.monotonic()

    def state() -> str | None:
        rows = {r["run_id"]: r for r in json.loads(runner(["ls", str(store), "--json"], env).output)}
        return rows["fault"]["state"] if rows["fault"]["state"].startswith("lost (no heartbeat since ") else None

    shown = wait_for(state, timeout=60, poll=0.5)
    seconds = time.monotonic() - killed
    text = runner(["ls", str(store)], env).output
    return Outcome(bool(shown) and "lost (no heartbeat since" in text, False, seconds if shown else float("nan"),
                   "" if shown else "still shown as running after 60 s")


SCENARIOS = [
    Scenario("two-agents-local", "2", "two node agents at once on one local storage and model", "s to the refusal",
             two_agents_at_once("local")),
    Scenario("two-agents-s3", "2", "two node agents at once on one S3 storage and model", "s to the refusal", two_agents_at_once("s3")),
    Scenario("bad-run-id", "6", "`--run-id '../../x'`, `a/b`, a newline, 300 characters", "s to the refusal (slowest)", bad_run_ids),
    Scenario("plan-unknown-flag", "8", "plan file / RUNNER_PLAN_JSON with a flag the pin lacks", "s to the refusal (slowest)",
             plan_with_unknown_flag),
    Scenario("torn-status", "11", "half-written status.json and one `{}` beside a good run", "s of `runner ls`", torn_status_record),
    Scenario("malformed-input", "13", "checkpoint manifest `null`/`{}`, `--heartbeat-sec -1`, `--recipe ../x.toml`",
             "s to the error or the run's end (slowest)", malformed_input),
    Scenario("kill-9-shows-lost", "15", "run killed with -9 (1 s heartbeat)", "s from the kill to \"lost\" in `runner ls`",
             killed_run_shows_lost),
]
