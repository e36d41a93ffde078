"""Several nodes: two node agents on 127.0.0.1 (node rank 0 and 1, one "GPU" each; the double's ranks join one gloo
process group) meet only through storage, a local folder or the real S3 server, and train as one world of 2."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, base_env, make_double, pid_alive, preseed_files, read_calls, runner, seed_s3, set_base_train_length

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (tests/run.sh installs the CPU wheel where there is one)")
THROUGH_BASE = ("data", "tokenizer", "base")
NODE_TIMEOUT_SEC = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_plan(tmp_path: Path, iterations: int = 20, save_every: int = 10, base_steps: tuple[str, ...] = (),
                  phases: tuple[str, ...] | None = THROUGH_BASE) -> Path:
    """The smoke plan for 2 nodes × 1 GPU, through base training (only `base_steps` of it, when given); phases=None: all of it."""
    result = runner(["plan", "--smoke", "--nodes", "2", "--device", "cuda", "--json"], base_env(tmp_path))
    assert result.code == 0, result.output
    plan = json.loads(result.output)
    plan["phases"] = [p for p in plan["phases"] if phases is None or p["name"] in phases]
    if base_steps:
        plan["phases"][-1]["steps"] = [s for s in plan["phases"][-1]["steps"] if s["name"] in base_steps]
    set_base_train_length(plan, iterations, save_every)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def start_agent(tmp_path: Path, plan: Path, storage: str, rank: int, port: int, launch: str, env: dict, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "runner.cli", "node", "run", "--plan", str(plan), "--storage", storage, "--run-id", "multi",
            "--nanochat-dir", str(tmp_path / "nanochat-seed"), "--python", sys.executable, "--scratch", str(tmp_path / f"node{rank}"),
            "--nnodes", "2", "--node-rank", str(rank), "--master", f"127.0.0.1:{port}", "--launch-id", launch, *extra]
    log = (tmp_path / f"{launch}-node{rank}.log").open("w")
    return subprocess.Popen(args, env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)


def run_launch(tmp_path, plan, storage, launch, env, *extra) -> list[str]:
    port = free_port()
    agents = [start_agent(tmp_path, plan, storage, rank, port, launch, env, *extra) for rank in (0, 1)]
    try:
        codes = [agent.wait(timeout=NODE_TIMEOUT_SEC) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    logs = [(tmp_path / f"{launch}-node{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], "\n\n".join(logs)
    return logs


def manifest(read, step: int) -> dict:
    return json.loads(read(f"base_checkpoints/d4/manifest_{step:06d}.json"))


def check_one_world_of_two(tmp_path, logs, read) -> None:
    leader, follower = logs
    assert "all-reduce over 2 ranks (gloo), world size 2" in leader  # both nodes' ranks in one process group
    assert "--nnodes=2 --node_rank=0 --nproc_per_node=1 --master_addr=127.0.0.1" in leader
    assert "--nnodes=2 --node_rank=1 --nproc_per_node=1 --master_addr=127.0.0.1" in follower
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"]
    assert {(c["rank"], c["world_size"]) for c in train} == {(0, 2), (1, 2)}
    sealed = manifest(read, 20)
    assert sealed["processes"] == 2
    assert {"model_000020.pt", "meta_000020.json", "optim_000020_rank0.pt", "optim_000020_rank1.pt"} == set(sealed["files"])
    # each node trained on its own scratch: rank 1's shard was written on node 1 only
    assert (tmp_path / "node1/base/base_checkpoints/d4/optim_000020_rank1.pt").is_file()
    assert not (tmp_path / "node0/base/base_checkpoints/d4/optim_000020_rank1.pt").exists()


def test_two_nodes_train_as_one_world_then_resume_after_both_are_killed(tmp_path):
    storage, env = tmp_path / "storage", base_env(tmp_path, {"NANOCHAT_DOUBLE_STEP_SEC": "0.4"})
    make_double(tmp_path)
    preseed_files(storage)
    # 40 steps: the kill lands well before the end even when a loaded machine seals step 10 late.
    plan = two_node_plan(tmp_path, iterations=40, base_steps=("base_train",))  # the evaluations run in the S3 test

    # First launch: killed (both agents, SIGKILL) once base training has sealed its step-10 checkpoint.
    port = free_port()
    agents = [start_agent(tmp_path, plan, str(storage), rank, port, "first", env) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + NODE_TIMEOUT_SEC
        while not (storage / "base_checkpoints/d4/manifest_000010.json").exists():
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents), (tmp_path / "first-node0.log").read_text()
            time.sleep(0.2)
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    assert manifest(lambda rel: (storage / rel).read_text(), 10)["processes"] == 2
    newest = max(int(p.name[9:15]) for p in (storage / "base_checkpoints/d4").glob("manifest_*.json"))
    assert newest < 40, "base training ended before the kill: nothing left to resume"
    deadline = time.monotonic() + 30  # the trainers die with their agents
    while any(pid_alive(c["pid"]) for c in read_calls(tmp_path / "calls.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)

    logs = run_launch(tmp_path, plan, str(storage), "second", base_env(tmp_path))
    check_one_world_of_two(tmp_path, logs, lambda rel: (storage / rel).read_text())
    assert f"base_train: resuming from step {newest}" in logs[0]
    resumed = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train" and f"--resume_from_step={newest}" in c["argv"]]
    assert sorted(c["rank"] for c in resumed) == [0, 1]
    assert f"resuming from step {newest} with this node's shards (ranks 1-1)" in logs[1]
    marker_dir = storage / "_runner/markers/base"
    assert len(list(marker_dir.glob("*.json"))) == 1

    # A launch id names one launch: the leader refuses to start one again (its followers would read old records).
    again = start_agent(tmp_path, plan, str(storage), 0, free_port(), "second", base_env(tmp_path))
    assert again.wait(timeout=60) == 7
    assert "Launch second of this run has been started before" in (tmp_path / "second-node0.log").read_text()


def test_two_nodes_meet_through_s3(s3_bucket, tmp_path):
    import fsspec

    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    make_double(tmp_path)
    plan = two_node_plan(tmp_path)
    logs = run_launch(tmp_path, plan, s3_bucket.url, "s3", base_env(tmp_path, s3_bucket.env))
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    check_one_world_of_two(tmp_path, logs, lambda rel: fs.cat(f"{s3_bucket.url[5:]}/{rel}").decode())
    status = json.loads(fs.cat(f"{s3_bucket.url[5:]}/_runner/runs/multi/status.json"))
    assert status["state"] == "succeeded"


def test_two_nodes_run_the_whole_smoke_plan_and_every_node_evaluates_what_its_phase_made(tmp_path):
    # mid and sft save their checkpoint once, on rank 0 (the leader's node), and their evaluations then load it on
    # every node: the follower stages it from storage, where the leader put it before announcing the evaluation.
    storage = tmp_path / "storage"
    make_double(tmp_path)
    preseed_files(storage)
    plan = two_node_plan(tmp_path, phases=None)
    assert {"mid", "sft"} <= {p["name"] for p in json.loads(plan.read_text())["phases"]}
    leader, follower = run_launch(tmp_path, plan, str(storage), "whole", base_env(tmp_path))
    evals = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.chat_eval"]
    assert sorted((c["rank"], c["world_size"], c["argv"][c["argv"].index("-i") + 1]) for c in evals) == [
        (0, 2, "mid"), (0, 2, "sft"), (1, 2, "mid"), (1, 2, "sft")], follower[-3000:]
    for made in ("mid_checkpoints/d4", "chatsft_checkpoints/d4"):
        assert list((storage / made).glob("manifest_*.json")), made  # sealed, and so staged on node 1
        assert list((tmp_path / f"node1/base/{made}").glob("model_*.pt")), made
    status = json.loads((storage / "_runner/runs/multi/status.json").read_text())
    assert status["state"] == "succeeded", status.get("eval_failures")

    # The evaluation fails on node 1 only: node 0 stops its part at once instead of waiting at torchrun's exit barrier.
    port, started = free_port(), time.monotonic()
    agents = [start_agent(tmp_path, plan, str(storage), rank, port, "evalfail", base_env(tmp_path, extra), "--only", "mid")
              for rank, extra in ((0, {}), (1, {"NANOCHAT_DOUBLE_FAIL": "chat_eval:mid"}))]
    codes = [agent.wait(timeout=NODE_TIMEOUT_SEC) for agent in agents]
    leader = (tmp_path / "evalfail-node0.log").read_text()
    assert codes == [3, 3], leader[-3000:]  # the run goes on past a failed evaluation, and says so
    assert "mid/chat_eval_mid: stopped: mid/chat_eval_mid failed on another node (node 1 exited with code 1)" in leader
    assert "still running, no output" not in leader and time.monotonic() - started < 120
    # The leader exited only after node 1 read its end record: an engine that stops every task once one exits
    # non-zero (Slurm's srun --kill-on-bad-exit, on exit 3) finds node 1 done, with the run's own exit code.
    assert "the leader ended launch evalfail: succeeded (exit code 3)" in (tmp_path / "evalfail-node1.log").read_text()
    assert (storage / "_runner/runs/multi/launches/evalfail/ended.node1.json").is_file()


def test_a_follower_without_a_leader_stops_within_its_bound(tmp_path):
    storage = tmp_path / "storage"
    make_double(tmp_path)
    preseed_files(storage)
    plan = two_node_plan(tmp_path)
    started = time.monotonic()
    follower = start_agent(tmp_path, plan, str(storage), 1, free_port(), "alone", base_env(tmp_path), "--leader-wait-sec", "3")
    code = follower.wait(timeout=60)
    output = (tmp_path / "alone-node1.log").read_text()
    assert code == 7, output
    assert time.monotonic() - started < 30
    assert "No leader (node rank 0) of launch alone appeared in storage within 3 s" in output and "Traceback" not in output


def test_a_node_count_other_than_the_plans_is_refused(tmp_path):
    plan = two_node_plan(tmp_path)
    result = runner(["node", "run", "--plan", str(plan), "--storage", str(tmp_path / "s"), "--run-id", "multi"], base_env(tmp_path))
    assert result.code != 0 and "This plan is for 2 node(s), but this agent was started as one of 1." in result.output
