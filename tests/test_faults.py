"""Fault injection against the real S3 server: kill -9 the node agent mid-training and mid-upload, take the S3
server away for a few seconds, and check that no run is lost and no manifest points at a partial checkpoint."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pytest

from harness import base_env, make_double, pid_alive, preseed_files, read_calls, runner, seed_s3, smoke_plan, start_node
from runner.checkpoints import stored_checkpoints
from runner.storage import open_storage
from tests.infra.seaweedfs import SeaweedFS

WAIT_SEC = 120
POLL_SEC = 0.02


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT_SEC):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the node agent exited ({proc.returncode}) before {what}")
        time.sleep(POLL_SEC)
    pytest.fail(f"timed out waiting for {what}")


def kill_agent(proc: subprocess.Popen, calls_file) -> None:
    """kill -9 the agent only; its trainer must die with it (no orphan keeps writing checkpoints)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    trainers = [c["pid"] for c in read_calls(calls_file) if c["module"] == "scripts.base_train"]
    wait_for(lambda: not any(pid_alive(p) for p in trainers), "the orphaned trainer to exit", timeout=30)


def kill_agent_once(proc: subprocess.Popen, calls_file, condition, what: str):
    """Wait for `condition`, then kill -9 the agent (kill_agent); the agent is stopped whatever happens. Returns
    the condition's value."""
    try:
        value = wait_for(condition, what, proc)
        kill_agent(proc, calls_file)
        return value
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def checkpoint_digest(storage) -> dict[str, str]:
    """name -> sha256 of every .pt in the base checkpoint folder (meta holds timings, so it is left out)."""
    out = {}
    for name in storage.find("base_checkpoints/d4"):
        if name.endswith(".pt"):
            out[name] = hashlib.sha256(storage.fs.cat(storage.path(f"base_checkpoints/d4/{name}"))).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same plan run once without faults, on local storage: the files every faulty run must end with."""
    tmp = tmp_path_factory.mktemp("reference")
    storage = tmp / "storage"
    preseed_files(storage)
    plan, double, env = smoke_plan(tmp), make_double(tmp), base_env(tmp)
    for phase in ("data", "tokenizer", "base"):
        result = runner(["node", "run", "--plan", str(plan), "--storage", str(storage), "--nanochat-dir", str(double),
                         "--python", sys.executable, "--only", phase], env)
        assert result.code == 0, result.output
    return checkpoint_digest(open_storage(str(storage)))


@pytest.mark.parametrize("kill_after_step", [0, 10, 25])
def test_kill_9_during_base_train_then_resume(kill_after_step, s3_bucket, s3_env, tmp_path, reference):
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    plan, double = smoke_plan(tmp_path), make_double(tmp_path)
    env = base_env(tmp_path, dict(s3_bucket.env, NANOCHAT_DOUBLE_STEP_SEC="0.1"))
    storage = open_storage(s3_bucket.url)
    proc = start_node(plan, s3_bucket.url, double, env, tmp_path / "first.log")
    if kill_after_step:
        kill_agent_once(proc, tmp_path / "calls.jsonl", lambda: kill_after_step in stored_checkpoints(storage, "base_checkpoints/d4").complete,
                        f"checkpoint {kill_after_step} in storage")
    else:
        kill_agent_once(proc, tmp_path / "calls.jsonl",
                        lambda: any(c["module"] == "scripts.base_train" for c in read_calls(tmp_path / "calls.jsonl")), "base_train")
    stored = stored_checkpoints(storage, "base_checkpoints/d4")
    newest = max(stored.complete, default=None)
    assert (newest or 0) >= kill_after_step

    again = runner(["node", "run", "--plan", str(plan), "--storage", s3_bucket.url, "--nanochat-dir", str(double),
                    "--python", sys.executable, "--run-id", "fault"], base_env(tmp_path, s3_bucket.env))
    assert again.code == 0, again.output
    if newest:
        assert f"resuming from step {newest}, the newest complete checkpoint in storage" in again.output
        resumed = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
        assert f"--resume_from_step={newest}" in resumed["argv"]
    assert checkpoint_digest(storage) == reference
    assert set(stored_checkpoints(storage, "base_checkpoints/d4").complete) == {5 * i for i in range(1, 9)}


def test_kill_9_during_a_checkpoint_upload_leaves_no_manifest_on_a_partial_checkpoint(s3_bucket, s3_env, tmp_path, reference):
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    plan, double = smoke_plan(tmp_path), make_double(tmp_path)
    # Big checkpoint files make each upload take a while, so the kill lands inside one.
    env = base_env(tmp_path, dict(s3_bucket.env, NANOCHAT_DOUBLE_STEP_SEC="0.05", NANOCHAT_DOUBLE_CKPT_MB="40"))
    storage = open_storage(s3_bucket.url)
    proc = start_node(plan, s3_bucket.url, double, env, tmp_path / "first.log")

    def mid_upload():
        listing = storage.find("base_checkpoints/d4")
        steps = {int(n.split("_")[1].split(".")[0]) for n in listing if n.startswith(("model_", "optim_"))}
        manifests = {int(n[9:15]) for n in listing if n.startswith("manifest_")}
        return sorted(steps - manifests) or None

    partial = kill_agent_once(proc, tmp_path / "calls.jsonl", mid_upload, "an upload in progress")
    stored = stored_checkpoints(storage, "base_checkpoints/d4")
    for step, manifest in stored.complete.items():  # every manifest lists files that are all there, whole
        listing = storage.find("base_checkpoints/d4")
        assert all(listing[name][0] == info["size"] for name, info in manifest["files"].items()), step
    assert set(partial) & set(stored.incomplete), (partial, stored)

    again = runner(["node", "run", "--plan", str(plan), "--storage", s3_bucket.url, "--nanochat-dir", str(double),
                    "--python", sys.executable, "--run-id", "fault"], base_env(tmp_path, dict(s3_bucket.env, NANOCHAT_DOUBLE_CKPT_MB="40")))
    assert again.code == 0, again.output
    assert "no manifest (its upload did not finish)" in again.output
    assert set(stored_checkpoints(storage, "base_checkpoints/d4").complete) == {5 * i for i in range(1, 9)}


def test_an_s3_outage_mid_run_is_ridden_out(tmp_path, monkeypatch):
    with SeaweedFS(tmp_path / "weed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        client = server.boto3_client()
        client.create_bucket(Bucket="outage")
        url = "s3://outage/run"
        seed_s3(url, server.storage_options(), tmp_path)
        plan, double = smoke_plan(tmp_path), make_double(tmp_path)
        env = base_env(tmp_path, dict(server.env(), NANOCHAT_DOUBLE_STEP_SEC="0.3"))  # 40 steps: 12 s of training
        storage = open_storage(url, check=False)
        proc = start_node(plan, url, double, env, tmp_path / "run.log")
        try:
            wait_for(lambda: 5 in stored_checkpoints(storage, "base_checkpoints/d4").complete, "the first checkpoint", proc)
            server.outage(6.0)  # in this thread: weed dies with the thread that started it (PDEATHSIG)
            assert proc.poll() is None, "the run ended before the outage was over: it proves nothing"
            assert proc.wait(timeout=WAIT_SEC) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        storage.invalidate()
        assert set(stored_checkpoints(storage, "base_checkpoints/d4").complete) == {5 * i for i in range(1, 9)}
        assert storage.exists("_runner/runs/fault/logs/base.log")
        status = storage.read_text("_runner/runs/fault/status.json")
        assert '"state": "succeeded"' in status


def test_second_run_skips_everything_and_a_rerun_restores_the_compile_cache(s3_bucket, s3_env, tmp_path):
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    double = make_double(tmp_path)
    args = ["node", "run", "--storage", s3_bucket.url, "--model", "smoke", "--nanochat-dir", str(double), "--python", sys.executable, "--run-id", "c"]
    first = runner(args, base_env(tmp_path, s3_bucket.env))
    assert first.code == 0, first.output
    assert "compile cache miss" in first.output and "[nanochat double] compile: cold" in first.output
    fresh_node = base_env(tmp_path, dict(s3_bucket.env, RUNNER_SCRATCH=str(tmp_path / "scratch-2")))
    second = runner(args, fresh_node)
    assert second.code == 0 and second.output.count("skipping") == 6
    third = runner([*args, "--from", "base"], base_env(tmp_path, dict(s3_bucket.env, RUNNER_SCRATCH=str(tmp_path / "scratch-3"))))
    assert third.code == 0, third.output
    assert "compile cache hit" in third.output and "[nanochat double] compile: warm cache hit" in third.output
    status = open_storage(s3_bucket.url).read_text("_runner/runs/c/status.json")
    assert '"restore": "hit"' in status
