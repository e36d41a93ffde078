"""Run records in storage under faults: one torn status.json leaves `runner ls` and `runner report` working for
every other run and is flagged on its own row; a node rerun over a torn record keeps going and says so; a run
killed with -9 shows as lost once its heartbeat stops, while a live one keeps showing its state (real local folder,
the real CLI, the nanochat test double)."""

from __future__ import annotations

import json
import signal
import time

from harness import base_env, make_double, node_run, preseed_files, read_calls, runner, smoke_plan, start_node

RUNS = "_runner/runs"


def _torn(text: str) -> str:
    return text[: len(text) // 2]  # what a write cut in the middle leaves


def test_one_torn_status_leaves_ls_and_report_working_for_the_others(tmp_path):
    storage, double, env = tmp_path / "storage", make_double(tmp_path), base_env(tmp_path)
    preseed_files(storage)
    assert node_run(str(storage), double, env).code == 0
    good = (storage / RUNS / "test-run/status.json").read_text()
    (storage / RUNS / "torn").mkdir()
    (storage / RUNS / "torn/status.json").write_text(_torn(good))
    (storage / RUNS / "empty").mkdir()
    (storage / RUNS / "empty/status.json").write_text("{}")

    listed = runner(["ls", str(storage)], env)
    assert listed.code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines() if line and not line.startswith(("run ", "note:"))}
    assert "succeeded" in rows["test-run"]
    assert "unreadable" in rows["torn"] and "unreadable" in rows["empty"]
    assert "The status record of run 'torn' is unreadable: not JSON" in listed.output
    assert "The status record of run 'empty' is unreadable: missing or malformed field(s): run_id, state, phases" in listed.output
    as_json = {r["run_id"]: r for r in json.loads(runner(["ls", str(storage), "--json"], env).output)}
    assert as_json["test-run"]["state"] == "succeeded" and as_json["torn"]["state"] == "unreadable"

    report = runner(["report", "test-run", "--storage", str(storage)], env)
    assert report.code == 0, report.output
    assert (storage / RUNS / "test-run/report/report.md").read_text().startswith("# nanochat run `test-run`")
    refused = runner(["report", "torn", "--storage", str(storage)], env)
    assert refused.code == 1 and "The status record of run 'torn' is unreadable" in refused.output
    assert "--run-id torn" in refused.output and "Traceback" not in refused.output


def test_a_node_rerun_over_a_torn_status_keeps_going_and_says_so(tmp_path):
    storage, double, env = tmp_path / "storage", make_double(tmp_path), base_env(tmp_path)
    preseed_files(storage)
    assert node_run(str(storage), double, env, "--only", "data").code == 0
    record = storage / RUNS / "test-run/status.json"
    record.write_text(_torn(record.read_text()))
    rerun = node_run(str(storage), double, env, "--only", "tokenizer")
    assert rerun.code == 0, rerun.output
    assert "the earlier status record was unreadable (not JSON" in rerun.output
    assert "this run continues" in rerun.output and "Traceback" not in rerun.output
    status = json.loads(record.read_text())  # whole again
    assert status["state"] == "succeeded" and status["phases"]["tokenizer"]["state"] == "done"
    assert "earlier attempts and node time are not counted" in status["history_lost"]
    # The next rerun counts attempts again from the whole record.
    assert node_run(str(storage), double, env, "--only", "tokenizer").code == 0
    assert json.loads(record.read_text())["attempts"] == 2


def test_a_run_killed_with_kill_9_shows_as_lost_once_its_heartbeat_stops(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    env = base_env(tmp_path, {"NANOCHAT_DOUBLE_STEP_SEC": "1"})
    agent = start_node(smoke_plan(tmp_path), str(storage), double, env, tmp_path / "agent.log", "--heartbeat-sec", "1")
    try:
        deadline = time.monotonic() + 120
        while not any(c["module"] == "scripts.base_train" for c in read_calls(tmp_path / "calls.jsonl")):
            assert time.monotonic() < deadline and agent.poll() is None, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        time.sleep(6)  # longer than 4 heartbeats, in one silent training step after another
        alive = {r["run_id"]: r for r in json.loads(runner(["ls", str(storage), "--json"], env).output)}
        assert alive["fault"]["state"] == "running"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    time.sleep(6)
    rows = {r["run_id"]: r for r in json.loads(runner(["ls", str(storage), "--json"], env).output)}
    assert rows["fault"]["state"].startswith("lost (no heartbeat since ") and rows["fault"]["state"].endswith("; was running)")
    text = runner(["ls", str(storage)], env).output
    assert "lost (no heartbeat since" in text
