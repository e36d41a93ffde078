"""The local backend on a real Docker engine: `runner up` / `logs` / `status` / `down`, the GPUs a run asks for,
and preflight on an engine without the NVIDIA driver. The image is the real Dockerfile built offline
(conftest: runner_image); inside it runs the nanochat test double."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.base import RunSpec
from backends.local import LocalBackend
from harness import REPO, preseed_files
from runner.plan import build_plan
from tests.infra.image import TIMINGS

pytestmark = pytest.mark.docker

RUN_TIMEOUT_SEC = 300


def runner(env: dict, *args: str, timeout: float = RUN_TIMEOUT_SEC) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def up_args(storage: Path, image: str, flags_dir: str, run_id: str, *extra: str) -> list[str]:
    return ["up", "--backend", "local", "--smoke", "--storage", str(storage), "--image", image, "--run-id", run_id,
            "--heartbeat-sec", "30", "-e", f"NANOCHAT_DOUBLE_FLAGS_DIR={flags_dir}", *extra]


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage folder with every pre-seed item in it, so nothing in the container touches a network."""
    folder = tmp_path / "storage"
    preseed_files(folder)
    return folder


def read_status(storage: Path, run_id: str) -> dict:
    return json.loads((storage / "_runner" / "runs" / run_id / "status.json").read_text())


def test_up_smoke_runs_to_success_with_every_artifact_in_storage(docker_env, runner_image, image_flags_dir, storage, no_leftover_containers):
    started = time.monotonic()
    result = runner(docker_env, *up_args(storage, runner_image, image_flags_dir, "smoke-up"))
    TIMINGS["containerised smoke (runner up --smoke, preflight included)"] = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "preflight: GPUs: the engine passed NVIDIA_VISIBLE_DEVICES=0" in out
    assert "image nanochat-runner:test: nanochat a1ccb3d, as the plan needs" in out
    assert "started run smoke-up: local://nanochat-smoke-up" in out
    assert "runner logs -f local://nanochat-smoke-up" in out
    assert "run smoke-up: succeeded (exit 0)" in out
    # Every artifact, under nanochat's own names, written by the calling user (not root-owned by the image's user).
    assert sorted(p.name for p in (storage / "base_data").iterdir()) == [f"shard_{i:05d}.parquet" for i in range(4)]
    assert (storage / "tokenizer" / "tokenizer.pkl").is_file()
    assert any((storage / "base_checkpoints" / "d4").glob("model_*.pt"))
    assert any((storage / "mid_checkpoints" / "d4").glob("model_*.pt"))
    assert any((storage / "chatsft_checkpoints" / "d4").glob("model_*.pt"))
    assert (storage / "report" / "report.md").read_text().strip()
    assert read_status(storage, "smoke-up")["state"] == "succeeded"
    assert (storage / "tokenizer" / "tokenizer.pkl").stat().st_uid == os.getuid()
    # The finished container stays for `logs` and `status` until `down`.
    listed = runner(docker_env, "status")
    assert "smoke-up" in listed.stdout and "succeeded" in listed.stdout, listed.stdout + listed.stderr
    detail = runner(docker_env, "status", "smoke-up")
    assert "state:    succeeded (exit 0)" in detail.stdout and "report" in detail.stdout, detail.stdout + detail.stderr
    assert "live:     smoke-up [succeeded]" in detail.stdout and "checkpoint 20" in detail.stdout, detail.stdout
    as_json = json.loads(runner(docker_env, "status", "smoke-up", "--json").stdout)
    assert as_json["status"]["state"] == "succeeded" and as_json["status"]["newest_checkpoint"]["step"] == 20
    logs = runner(docker_env, "logs", "local://nanochat-smoke-up", "--tail", "12")
    assert logs.returncode == 0 and "finished" in logs.stdout, logs.stdout + logs.stderr
    down = runner(docker_env, "down", "smoke-up")
    assert down.returncode == 0 and "succeeded" in down.stdout, down.stdout + down.stderr
    gone = runner(docker_env, "status", "smoke-up")
    assert gone.returncode == 1 and "No run 'smoke-up'" in gone.stderr and "To fix:" in gone.stderr


def test_chat_in_a_container_answers_and_serves_the_web_ui(docker_env, runner_image, image_flags_dir, storage, no_leftover_containers):
    """`runner chat RUN --backend local`: the chat CLI answers from the run's checkpoint, and the web UI, bound to
    127.0.0.1 inside a host-networked container, is this machine's http://127.0.0.1:PORT."""
    import shutil
    import socket
    import urllib.request

    assert runner(docker_env, *up_args(storage, runner_image, image_flags_dir, "chatty")).returncode == 0
    env = docker_env
    chat = ["chat", "chatty", "--storage", str(storage), "--backend", "local", "--image", runner_image, "-e", f"NANOCHAT_DOUBLE_FLAGS_DIR={image_flags_dir}"]
    answer = runner(env, *chat, "-p", "Why is the sky blue?")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "chatting with the sft model of run chatty" in answer.stdout + answer.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([sys.executable, "-m", "runner.cli", *chat, "--web", "--port", str(port)], env=env, cwd=str(REPO),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240  # a container start, staging and the server, on a busy CI machine
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert "<title>NanoChat</title>" in response.read().decode()
                    break
            except OSError:
                assert web.poll() is None, web.stdout.read()
                assert time.monotonic() < deadline, "the containerised web UI did not come up"
                time.sleep(0.3)
        chromium = shutil.which("chromium")
        if chromium:
            dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                                  f"--user-data-dir={storage.parent / 'chromium'}", "--dump-dom", f"http://127.0.0.1:{port}/"],
                                 capture_output=True, text=True, timeout=120)
            assert "<title>NanoChat</title>" in dom.stdout
    finally:
        web.send_signal(signal.SIGINT)
        try:
            web.wait(timeout=30)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
        subprocess.run(["docker", "rm", "-f", "nanochat-chat-chatty"], env=docker_env, capture_output=True)
        runner(docker_env, "down", "chatty")


def test_ctrl_c_detaches_and_logs_f_reattaches(docker_env, docker_engine, runner_image, image_flags_dir, storage, no_leftover_containers):
    """Ctrl-C on `runner up` leaves the run going; `runner logs -f HANDLE` follows it to its end from another process."""
    args = up_args(storage, runner_image, image_flags_dir, "detach-me", "--gpu-ids", "3", "-e", "NANOCHAT_DOUBLE_STEP_SEC=0.3")
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", *args], env=docker_env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_SEC
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("step 00002/"):  # base_train is under way inside the container
                break
        assert any(line.startswith("step 00002/") for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "detached; the run goes on. Reattach: runner logs -f local://nanochat-detach-me" in out

    client = docker_engine.client()
    container = client.containers.get("nanochat-detach-me")
    assert container.status == "running"
    # The GPU asked for reached the run's processes (the engine sets it in the spec of the container's init, so
    # read the environment of PID 1, not of a `docker exec`).
    environ = container.exec_run(["cat", "/proc/1/environ"]).output.decode().split("\0")
    assert "NVIDIA_VISIBLE_DEVICES=3" in environ
    assert container.attrs["HostConfig"]["IpcMode"] == "host"
    assert container.labels["org.nanochat-runner.run-id"] == "detach-me"
    client.close()
    assert "running" in runner(docker_env, "status", "detach-me").stdout

    reattached = runner(docker_env, "logs", "-f", "local://nanochat-detach-me")
    assert reattached.returncode == 0, reattached.stdout + reattached.stderr
    assert "run detach-me finished" in reattached.stdout
    assert "run detach-me: succeeded (exit 0)" in reattached.stderr
    assert read_status(storage, "detach-me")["state"] == "succeeded"
    assert runner(docker_env, "down", "local://nanochat-detach-me").returncode == 0


def test_down_stops_a_running_run_and_a_rerun_continues(docker_env, runner_image, image_flags_dir, storage, no_leftover_containers):
    args = up_args(storage, runner_image, image_flags_dir, "stop-me", "--detach", "-e", "NANOCHAT_DOUBLE_STEP_SEC=2")
    started = runner(docker_env, *args)
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == "local://nanochat-stop-me"
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while time.monotonic() < deadline and "step 00001/" not in runner(docker_env, "logs", "stop-me").stdout:
        time.sleep(1)
    down = runner(docker_env, "down", "stop-me", "--grace", "30")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "cancelled (exit 130)" in down.stdout  # the node agent stopped its phase on SIGTERM
    status = read_status(storage, "stop-me")
    assert status["state"] == "interrupted" and status["phases"]["data"]["state"] == "done"
    # The same run id continues from storage: finished phases are skipped.
    again = runner(docker_env, *up_args(storage, runner_image, image_flags_dir, "stop-me"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "phase data: done" in again.stdout and "skipping" in again.stdout
    assert runner(docker_env, "down", "stop-me").returncode == 0


def test_up_builds_a_missing_image_from_the_context(docker_env, docker_engine, runner_image, image_context, image_flags_dir, storage, no_leftover_containers):
    """No image under the asked tag: `runner up` builds it from the context (cached layers make this quick here)."""
    context, build_args = image_context
    args = [f"--build-arg={k}={v}" for k, v in build_args.items() if k != "NANOCHAT_REF"]  # up passes the plan's commit
    result = runner(docker_env, *up_args(storage, "nanochat-runner:built-by-up", image_flags_dir, "built", "--context", str(context), *args))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "building image nanochat-runner:built-by-up" in out and "nanochat a1ccb3d" in out
    assert "run built: succeeded (exit 0)" in out
    assert runner(docker_env, "down", "built").returncode == 0
    docker_engine.client().images.remove("nanochat-runner:built-by-up")


@pytest.mark.parametrize(
    "gpus, gpu_ids, visible",
    [(8, None, "0,1,2,3,4,5,6,7"), (1, "all", "all"), (2, "1,3", "1,3")],
)
def test_the_gpus_asked_for_reach_the_container(docker_engine, runner_image, monkeypatch, tmp_path, gpus, gpu_ids, visible, no_leftover_containers):
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    plan = build_plan("seed", "d12" if gpus > 1 else "smoke", gpus=gpus)
    spec = RunSpec(plan=plan, storage=str(tmp_path / "s"), image=runner_image, gpu_ids=gpu_ids)
    note = LocalBackend().probe_gpus(spec)
    assert f"NVIDIA_VISIBLE_DEVICES={visible} " in note


def test_preflight_stops_on_an_engine_without_the_nvidia_driver(docker_engine_without_gpus, docker_env, storage, tmp_path):
    """No NVIDIA hook on that engine's PATH: the GPU probe cannot start, and nothing is left running."""
    from tests.infra.image import BASE_TAG, import_base

    client = docker_engine_without_gpus.client(timeout=900)
    import_base(client)
    env = dict(docker_env, DOCKER_HOST=docker_engine_without_gpus.host)
    result = runner(env, *up_args(storage, BASE_TAG, "/nowhere", "no-gpu"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Docker cannot give containers GPUs: it has no NVIDIA runtime" in result.stderr
    assert "could not select device driver" in result.stderr
    assert "To fix:" in result.stderr and "nvidia-ctk runtime configure --runtime=docker" in result.stderr
    assert "started run" not in result.stderr
    assert client.containers.list(all=True) == []
    client.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_preflight_stops_when_the_storage_disk_is_too_small(docker_env, runner_image, tmp_path, no_leftover_containers):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True, timeout=30)
    try:
        result = runner(docker_env, "up", "--backend", "local", "--smoke", "--storage", str(small / "storage"), "--image", runner_image, "--run-id", "tiny-disk")
    finally:
        subprocess.run(["umount", str(small)], check=True, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Not enough free disk for smoke: storage" in result.stderr and "To fix:" in result.stderr
    assert "started run" not in result.stderr
