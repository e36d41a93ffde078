"""`runner up` with no backend: this machine, no Docker. On a machine without NVIDIA GPUs `--smoke` is the CPU
rehearsal (one process, the rehearsal's plan checked against the pin like every plan), storage defaults to
./storage, and a detached run is followed, listed and stopped by its here:// handle. nanochat here is the test
double (NANOCHAT_DIR), told that torch finds only a CPU (NANOCHAT_DOUBLE_DEVICE=cpu)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import base_env, make_double, pid_alive, preseed_files, read_calls


def laptop(tmp_path: Path, **extra) -> dict:
    """A laptop's shell: no GPU, nanochat's double as the checkout, caches under tmp."""
    env = base_env(tmp_path, {"NANOCHAT_DIR": str(make_double(tmp_path)), "NANOCHAT_DOUBLE_DEVICE": "cpu",
                              "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
                              "RUNNER_NANOCHAT_PYTHON": sys.executable, **extra})
    return env


def runner(env: dict, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)


def test_up_smoke_without_gpus_runs_the_cpu_rehearsal_into_dot_storage(tmp_path):
    env = laptop(tmp_path)
    preseed_files(tmp_path / "storage")  # what an earlier run (or `runner sync`) put there; this machine has no network
    result = runner(env, tmp_path, "up", "--smoke", "--run-id", "rehearsal")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "on this machine's CPU (the rehearsal)" in out and "started run rehearsal: here://rehearsal" in out
    storage = tmp_path / "storage"
    for made in ("base_data/shard_00003.parquet", "tokenizer/tokenizer.pkl", "base_checkpoints/d4", "mid_checkpoints/d4",
                 "chatsft_checkpoints/d4", "report/report.md", "_runner/runs/rehearsal/status.json"):
        assert (storage / made).exists(), made  # the layout a GPU run uses: `runner sync` carries it to the real run
    plan = json.loads((storage / "_runner/runs/rehearsal/plan.json").read_text())
    assert plan["device"] == "cpu" and plan["gpus"] == 1
    calls = read_calls(tmp_path / "calls.jsonl")
    assert calls and all(c["world_size"] == 1 for c in calls)  # plain python -m: nanochat on a CPU runs one process
    status = json.loads((storage / "_runner/runs/rehearsal/status.json").read_text())
    assert status["state"] == "succeeded", status


def test_a_detached_rehearsal_is_followed_listed_and_stopped_by_its_handle(tmp_path):
    env = laptop(tmp_path, NANOCHAT_DOUBLE_STEP_SEC="0.5", NANOCHAT_DOUBLE_MAX_STEPS="400")
    preseed_files(tmp_path / "storage")
    started = runner(env, tmp_path, "up", "--smoke", "--run-id", "slow", "--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == "here://slow"
    run_dir = tmp_path / "cache/nanochat-runner/runs/slow"
    deadline = time.monotonic() + 120
    while "base_train" not in (run_dir / "output.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    listed = runner(env, tmp_path, "status")
    assert "slow" in listed.stdout and "running" in listed.stdout, listed.stdout + listed.stderr
    shown = runner(env, tmp_path, "status", "slow")  # a bare run id finds the run on this machine
    assert "here://slow" in shown.stdout and "live:" in shown.stdout, shown.stdout + shown.stderr
    wrapper = int((run_dir / "wrapper.pid").read_text())
    stopped = runner(env, tmp_path, "down", "here://slow", "--grace", "10")
    assert stopped.returncode == 0 and "cancelled" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not pid_alive(wrapper) and not run_dir.exists()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "nanochat-seed")], capture_output=True, text=True).stdout.split()
    assert leftover == [], "a process of the run outlived `runner down`"
    again = runner(env, tmp_path, "up", "--smoke", "--run-id", "slow", "--detach")  # the same id continues from storage
    assert again.returncode == 0
    follow = runner(env, tmp_path, "logs", "-f", "here://slow", timeout=400)
    assert follow.returncode == 0, follow.stdout[-2000:] + follow.stderr
    assert "phase data: done (marker" in follow.stdout  # finished phases of the stopped run are kept, not redone
    assert "phase base: done in" in follow.stdout


def test_a_gpu_plan_on_a_machine_without_gpus_is_refused_before_anything_starts(tmp_path):
    env = laptop(tmp_path)
    result = runner(env, tmp_path, "up", "--model", "d20")
    assert result.returncode == 1
    assert "runs on 8 NVIDIA GPU(s), but this machine has no" in result.stderr and "runner up --smoke" in result.stderr
    assert not (tmp_path / "cache/nanochat-runner/runs").exists()
    cpu = runner(env, tmp_path, "plan", "--model", "d20", "--device", "cpu")
    assert cpu.returncode == 1 and "only the rehearsal runs there" in cpu.stderr


def test_plan_smoke_says_how_long_the_rehearsal_takes_here(tmp_path):
    result = runner(laptop(tmp_path), tmp_path, "plan", "--smoke")
    assert result.returncode == 0, result.stderr
    assert "this machine's CPU (the rehearsal)" in result.stdout and "rehearsal: minutes per phase as measured" in result.stdout
    assert "torch.distributed.run" not in result.stdout and "torchrun" not in result.stdout
