"""One writer per model folder: node agents on the same storage (a real local folder and the real S3 server)
take a lease before writing; a second one is refused and told who holds it; a dead holder's lease is taken over
after it expires; an agent whose lease is taken stops before it writes again."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import fsspec
import pytest
from harness import base_env, make_double, pid_alive, preseed_files, read_calls, seed_s3, smoke_plan, start_node

from runner.lease import LeaseHeld, ModelLease
from runner.storage import open_storage

HEARTBEAT = "1"  # lease renewed every second, expires after 5 s without a renewal
LEASE = "_runner/leases/d4.json"  # the smoke model's tag


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(storage URL, env for the agents, fsspec fs, root path in fs) on a pre-seeded storage."""
    if request.param == "local":
        storage = tmp_path / "storage"
        preseed_files(storage)
        return str(storage), {}, fsspec.filesystem("file"), str(storage)
    bucket = request.getfixturevalue("s3_bucket")
    seed_s3(bucket.url, bucket.storage_options, tmp_path)
    return bucket.url, bucket.env, fsspec.filesystem("s3", **bucket.storage_options), bucket.url[5:]


def _agent(tmp_path, where, name: str, *extra: str, plan=None, step_sec: str = "0.2") -> tuple[subprocess.Popen, callable]:
    url, env_extra, _, _ = where
    env = base_env(tmp_path, {**env_extra, "NANOCHAT_DOUBLE_CALLS": str(tmp_path / f"calls-{name}.jsonl"),
                              "RUNNER_SCRATCH": str(tmp_path / f"scratch-{name}"), "NANOCHAT_DOUBLE_STEP_SEC": step_sec})
    log = tmp_path / f"{name}.log"
    double = tmp_path / name / "nanochat-seed"
    if not double.exists():
        make_double(tmp_path / name)
    proc = start_node(plan or smoke_plan(tmp_path), url, double, env, log, "--heartbeat-sec", HEARTBEAT, *extra)
    return proc, lambda: log.read_text()


def _start(tmp_path, where, run_id: str, *extra: str, plan=None, step_sec: str = "0.2"):
    """`runner node run --run-id RUN_ID` in the background; (process, function reading its output)."""
    return _agent(tmp_path, where, run_id, "--run-id", run_id, *extra, plan=plan, step_sec=step_sec)


def _wait(proc, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _wait_for_training(tmp_path, run_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c["module"] == "scripts.base_train" for c in read_calls(tmp_path / f"calls-{run_id}.jsonl")):
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_id} never started base_train")


def test_two_agents_started_together_one_trains_the_other_is_refused_by_name(tmp_path, where):
    plan = smoke_plan(tmp_path)
    one, out_one = _start(tmp_path, where, "one", plan=plan)
    two, out_two = _start(tmp_path, where, "two", plan=plan)
    codes = {"one": _wait(one), "two": _wait(two)}
    outputs = {"one": out_one(), "two": out_two()}
    winner = next(name for name, code in codes.items() if code == 0)
    loser = "two" if winner == "one" else "one"
    assert codes[loser] == 8, outputs[loser]
    assert f"Model d4 in this storage is being written by run {winner}" in outputs[loser]
    assert "--steal" in outputs[loser] and "Traceback" not in outputs[loser]
    assert read_calls(tmp_path / f"calls-{loser}.jsonl") == []  # it ran nothing
    assert any(c["module"] == "scripts.base_train" for c in read_calls(tmp_path / f"calls-{winner}.jsonl"))
    _, _, fs, root = where
    assert not fs.exists(f"{root}/_runner/runs/{loser}")  # and wrote nothing
    assert not fs.exists(f"{root}/{LEASE}")  # released at the end


def test_a_stale_lease_from_a_kill_9_is_taken_over_after_it_expires(tmp_path, where):
    _, _, fs, root = where
    plan = smoke_plan(tmp_path)
    first, _ = _start(tmp_path, where, "first", plan=plan, step_sec="1")
    _wait_for_training(tmp_path, "first")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # As if the killed agent had run on another machine: nobody here can tell that it is dead.
    record = json.loads(fs.cat(f"{root}/{LEASE}"))
    assert record["run_id"] == "first"
    # Its last renewal is moved to now, with 20 s to go, so that the next agent surely starts while it is fresh.
    record.update(host="another-node", heartbeat_at=time.time(), expires_at=time.time() + 20)
    fs.pipe(f"{root}/{LEASE}", json.dumps(record).encode())

    fresh, out = _start(tmp_path, where, "second", "--steal", plan=plan)
    assert _wait(fresh) == 8
    assert "is being written by run first (host another-node" in out() and "--steal-now" in out()
    time.sleep(max(0.0, record["expires_at"] - time.time()) + 0.5)
    without, out = _start(tmp_path, where, "second", plan=plan)
    assert _wait(without) == 8
    assert "its lease expired at" in out() and "run the same command with --steal" in out()
    took, out = _start(tmp_path, where, "second", "--steal", plan=plan)
    assert _wait(took) == 0, out()
    assert "taking over the expired lease of model d4: run first (host another-node" in out()
    status = json.loads(fs.cat(f"{root}/_runner/runs/second/status.json"))
    assert status["state"] == "succeeded"


def test_a_rerun_after_kill_9_on_the_same_machine_takes_over_at_once(tmp_path, where):
    plan = smoke_plan(tmp_path)
    first, _ = _start(tmp_path, where, "again", plan=plan, step_sec="1")
    _wait_for_training(tmp_path, "again")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    rerun, out = _start(tmp_path, where, "again", plan=plan)
    assert _wait(rerun) == 0, out()
    assert "that process is gone" in out()


def test_an_agent_whose_lease_is_stolen_stops_before_its_next_write(tmp_path, where):
    _, _, fs, root = where
    plan = smoke_plan(tmp_path)
    victim, victim_out = _start(tmp_path, where, "victim", plan=plan, step_sec="1")
    _wait_for_training(tmp_path, "victim")
    thief, thief_out = _start(tmp_path, where, "thief", "--steal-now", plan=plan)
    assert _wait(victim, timeout=60) == 8, victim_out()
    assert "lost the lease of model d4 (taken over by run thief" in victim_out()
    assert "Traceback" not in victim_out()
    status_after_loss = fs.cat(f"{root}/_runner/runs/victim/status.json")
    assert _wait(thief) == 0, thief_out()
    assert "--steal-now: taking the lease of model d4 from run victim" in thief_out()
    assert fs.cat(f"{root}/_runner/runs/victim/status.json") == status_after_loss  # the victim wrote nothing more
    assert json.loads(fs.cat(f"{root}/_runner/runs/thief/status.json"))["state"] == "succeeded"
    assert not pid_alive(victim.pid)


def acquire_at_once(leases: list) -> list[str]:
    """Every lease tries to acquire at the same moment, each on its own thread; "won" or the refusal, per lease."""
    outcomes: list = [None] * len(leases)
    gate = threading.Barrier(len(leases))

    def take(i: int) -> None:
        gate.wait()
        try:
            leases[i].acquire()
            outcomes[i] = "won"
        except LeaseHeld as e:
            outcomes[i] = str(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


def test_racing_acquires_let_exactly_one_win(tmp_path, where, monkeypatch):
    url, env, _, _ = where
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage = open_storage(url)
    leases = [ModelLease(storage, "d4", f"run-{i}", 30, log=lambda _: None) for i in range(6)]
    outcomes = acquire_at_once(leases)
    assert outcomes.count("won") == 1, outcomes
    winner = outcomes.index("won")
    assert all(f"being written by run run-{winner}" in o for o in outcomes if o != "won")
    leases[winner].release()
    leases[0 if winner else 1].acquire()  # free again once released


def test_on_a_filesystem_without_conditional_writes_the_read_back_lets_one_win(tmp_path):
    storage = open_storage("memory://lease-read-back")
    leases = [ModelLease(storage, "d4", f"run-{i}", 30, log=lambda _: None) for i in range(4)]
    outcomes = acquire_at_once(leases)
    assert outcomes.count("won") == 1, outcomes
    winner = leases[outcomes.index("won")]
    assert winner.renew()
    other = next(lease for lease in leases if lease is not winner)
    other.acquire(steal_now=True)  # taken from the winner: its next renewal finds out
    assert not winner.renew() and "taken over by run" in str(winner.lost_error())


def test_a_retry_of_the_same_run_may_wait_for_the_lease_to_expire(tmp_path):
    storage = open_storage(str(tmp_path / "storage"))
    holder = ModelLease(storage, "d4", "same", 1, log=lambda _: None)  # expires 5 s after its last renewal
    holder.acquire()  # and is never renewed: its agent was preempted
    said: list[str] = []
    with pytest.raises(LeaseHeld, match="being written by run same"):
        ModelLease(storage, "d4", "same", 1, log=said.append).acquire()  # without waiting: refused at once
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="being written by run same"):
        ModelLease(storage, "d4", "other", 1, log=said.append).acquire(wait_sec=30)  # another run never waits
    assert time.monotonic() - started < 2
    retry = ModelLease(storage, "d4", "same", 1, log=said.append)
    retry.acquire(wait_sec=30)
    assert 2 < time.monotonic() - started < 15
    assert any(line.startswith("waiting ") and "run same" in line for line in said)
    assert retry.record is not None and retry.record.token != holder.token
