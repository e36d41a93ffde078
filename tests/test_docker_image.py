"""The image and compose.yaml: the Dockerfile lints clean and suits the legacy builder, the built image holds
what every node needs, and `docker compose run smoke` / `docker compose up chat` work on a real engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from runner.devices import nvidia_gpus
from harness import COMMITS, REPO, preseed_files
from tests.infra.image import TIMINGS

IMAGE_UID = 1000


def test_dockerfile_lints_clean_and_suits_the_legacy_builder():
    hadolint = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "hadolint"
    binary = str(hadolint) if hadolint.exists() else "hadolint"
    strict = subprocess.run([binary, "--failure-threshold", "error", "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 0, strict.stdout + strict.stderr
    everything = subprocess.run([binary, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert everything.returncode == 0, everything.stdout  # not even a warning
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"^\s*#\s*syntax\s*=", text, re.M | re.I), "a BuildKit frontend directive"
    # The proof is the runner_image fixture, which builds this file with the legacy builder; this names the usual
    # BuildKit-only constructs in instructions (comments may mention them).
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "--mount" not in instructions and "<<" not in instructions and "--link" not in instructions
    assert re.search(r'^ENTRYPOINT \["runner"\]$', text, re.M)


def run_in_image(docker_engine, image: str, *cmd: str, entrypoint: list[str] | None = None) -> str:
    client = docker_engine.client()
    try:
        return client.containers.run(image, list(cmd), entrypoint=entrypoint, remove=True, network_mode="none").decode()
    finally:
        client.close()


@pytest.mark.docker
def test_the_image_holds_nanochat_its_venv_and_the_runner(docker_engine, runner_image, no_leftover_containers):
    attrs = docker_engine.client().images.get(runner_image).attrs
    assert attrs["Config"]["Entrypoint"] == ["runner"]
    assert attrs["Config"]["User"] == str(IMAGE_UID)
    assert attrs["Config"]["Labels"]["org.nanochat-runner.nanochat-commit"] == COMMITS["seed"]
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["NANOCHAT_DIR"] == "/opt/nanochat" and env["RUNNER_SCRATCH"] == "/scratch"
    for name in ("HF_HOME", "TIKTOKEN_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "UV_CACHE_DIR", "XDG_CACHE_HOME"):
        assert env[name].startswith("/scratch/"), name

    assert "Usage: runner" in run_in_image(docker_engine, runner_image)  # the default command is --help
    script = ("id -u; cat $NANOCHAT_DIR/.nanochat-commit; $NANOCHAT_DIR/.venv/bin/python -c 'import pyarrow'; "
              "touch /scratch/x $NANOCHAT_DIR/report.md && echo writable; runner --version")
    out = run_in_image(docker_engine, runner_image, "-c", script, entrypoint=["/bin/sh"]).split()
    assert out[0] == str(IMAGE_UID) and out[1] == COMMITS["seed"] and "writable" in out and out[-1] == "0.1.0"


def compose(env: dict, project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = ["docker", "compose", "-f", str(REPO / "compose.yaml"), "--project-directory", str(project), "-p", "runner-test", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def compose_project(tmp_path, docker_env, runner_image, image_flags_dir):
    """(env, project folder with a .env, storage folder): compose.yaml as a user runs it, on the test image."""
    project = tmp_path / "project"
    project.mkdir()
    storage = project / "storage"
    preseed_files(storage)
    env = dict(docker_env, RUNNER_IMAGE=runner_image, RUNNER_STORAGE=str(storage), CHAT_PORT="18000")
    if os.geteuid() == 0:  # as on a real box: the folder is the image user's, and the image's default user writes
        subprocess.run(["chown", "-R", f"{IMAGE_UID}:{IMAGE_UID}", str(storage)], check=True)
    else:
        env.update(RUNNER_UID=str(os.getuid()), RUNNER_GID=str(os.getgid()))
    # Settings reach the container from .env, as the README says (the double needs to know its flag tables).
    (project / ".env").write_text(f"NANOCHAT_DOUBLE_FLAGS_DIR={image_flags_dir}\n")
    yield env, project, storage
    down = compose(env, project, "down", "--remove-orphans", "--timeout", "10")
    assert down.returncode == 0, down.stderr


@pytest.mark.docker
def test_compose_config_has_the_three_services(compose_project):
    env, project, _ = compose_project
    result = compose(env, project, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"smoke", "speedrun", "chat"}
    for name, count in (("smoke", 1), ("speedrun", "all"), ("chat", 1)):
        service = services[name]
        assert service["ipc"] == "host"
        device = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"] and device["count"] in (count, -1 if count == "all" else count)
        assert service["volumes"][0]["target"] == "/storage"
    assert services["chat"]["ports"][0]["host_ip"] == "127.0.0.1"


@pytest.mark.docker
def test_compose_run_smoke_then_chat(no_leftover_containers, compose_project):
    env, project, storage = compose_project
    for service, visible in (("smoke", "0"), ("speedrun", "all")):
        probe = compose(env, project, "run", "--rm", "--entrypoint", "cat", service, "/proc/1/environ")
        assert probe.returncode == 0, probe.stderr
        assert f"NVIDIA_VISIBLE_DEVICES={visible}" in probe.stdout.split("\0"), service

    started = time.monotonic()
    result = compose(env, project, "run", "smoke")  # the README's first command
    TIMINGS["containerised smoke (docker compose run smoke)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The smoke service plans for what its container has: one GPU where the engine passes one, else the CPU rehearsal.
    where = "1gpu" if nvidia_gpus() else "cpu"
    assert f"run seed-smoke-{where}-" in result.stdout and "finished" in result.stdout
    assert any((storage / "chatsft_checkpoints" / "d4").glob("model_*.pt"))
    assert (storage / "report" / "report.md").is_file()
    if os.geteuid() == 0:
        assert (storage / "report" / "report.md").stat().st_uid == IMAGE_UID  # written by the image's non-root user

    up = compose(env, project, "up", "--detach", "chat")
    assert up.returncode == 0, up.stderr
    deadline, answer = time.monotonic() + 60, None
    while time.monotonic() < deadline and answer is None:
        try:
            with urllib.request.urlopen("http://127.0.0.1:18000/health", timeout=5) as response:
                answer = json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    assert answer is not None, compose(env, project, "logs", "chat").stdout[-3000:]
    assert answer.get("status") == "ok" or answer.get("ready") is True, answer
