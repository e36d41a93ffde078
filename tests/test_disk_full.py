"""A scratch disk that fills up in the middle of training (a real, small tmpfs filled by another writer): the run
ends with the disk-full message and the fix, status "failed", no traceback from the runner's own threads; once
space is freed, the same command finishes the run."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from harness import base_env, make_double, node_run, preseed_files, read_calls, smoke_plan, start_node

SCRATCH_MB = 1500  # what the smoke plan asks scratch to hold (shards + checkpoints), so the space check passes


@pytest.fixture
def small_scratch(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "scratch"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SCRATCH_MB}m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_scratch_that_fills_up_mid_training_fails_the_run_clearly(tmp_path, small_scratch):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    env = base_env(tmp_path, {"RUNNER_SCRATCH": str(small_scratch), "NANOCHAT_DOUBLE_STEP_SEC": "0.3"})
    plan = smoke_plan(tmp_path)
    log = tmp_path / "agent.log"
    agent = start_node(plan, str(storage), double, env, log, "--heartbeat-sec", "1", "--run-id", "test-run")
    filler = small_scratch / "filler"
    try:
        deadline = time.monotonic() + 120
        while not any(c["module"] == "scripts.base_train" for c in read_calls(tmp_path / "calls.jsonl")):
            assert time.monotonic() < deadline and agent.poll() is None, log.read_text()
            time.sleep(0.2)
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, timeout=120)  # until ENOSPC
        code = agent.wait(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    output = log.read_text()
    assert code == 6, output
    assert "Error: The disk filled up while" in output and "Free space on that disk" in output
    assert "Exception in thread" not in output  # no thread of the runner died with a traceback
    status = json.loads((storage / "_runner/runs/test-run/status.json").read_text())
    assert status["state"] == "failed" and "space" in status["error"].lower()

    filler.unlink()
    again = node_run(str(storage), double, env, "--plan", str(plan), "--heartbeat-sec", "1")
    assert again.code == 0, again.output
    assert json.loads((storage / "_runner/runs/test-run/status.json").read_text())["state"] == "succeeded"
