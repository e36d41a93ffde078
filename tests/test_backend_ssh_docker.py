"""The SSH backend in docker mode: the runner image on the Docker engine of the SSH host.

The host is this machine, reached over a second test sshd whose sessions get DOCKER_HOST pointing at the test
engine's socket (conftest: docker_engine), as an admin would set it for a host whose engine is not at the default
socket; the test user is let onto that socket through a group, as `usermod -aG docker` does on a real host. The
image is the one the local backend's tests built (conftest: runner_image), named with --image. The engine has the
stand-in NVIDIA hook, so the run's GPU request shows up as NVIDIA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time

import pytest

from test_backend_ssh import handle, laptop_env, runner, seed_bucket
from tests.infra.image import TIMINGS
from tests.infra.sshd import SSHHost

pytestmark = [pytest.mark.ssh, pytest.mark.docker]
ENGINE_GROUP = "nanochat-ssh-docker"


@pytest.fixture(scope="module")
def docker_ssh_host(docker_engine):
    """sshd whose sessions have DOCKER_HOST=<the test engine>; the test user may use that engine's socket."""
    host = SSHHost(host_env={"DOCKER_HOST": docker_engine.host})
    subprocess.run(["groupadd", "-f", ENGINE_GROUP], check=True, timeout=30)
    socket = docker_engine.root / "docker.sock"
    os.chmod(docker_engine.root, os.stat(docker_engine.root).st_mode | 0o001)  # traverse only, to reach the socket
    subprocess.run(["chgrp", ENGINE_GROUP, str(socket)], check=True, timeout=30)
    os.chmod(socket, 0o660)
    host.start()
    subprocess.run(["usermod", "-aG", ENGINE_GROUP, host.user], check=True, timeout=30)  # read at each new login
    try:
        yield host
    finally:
        host.stop()
        host.remove()


def test_docker_mode_runs_the_image_on_the_hosts_engine(docker_ssh_host, docker_engine, runner_image, image_flags_dir,
                                                       s3_bucket, tmp_path, no_leftover_containers):
    host = docker_ssh_host
    seed_bucket(s3_bucket, tmp_path)
    env = laptop_env(host, s3_bucket.env)
    args = ["up", "--backend", "ssh", "--host", host.target, "--identity", str(host.client_key), "--mode", "docker",
            "--image", runner_image, "--smoke", "--storage", s3_bucket.url, "--run-id", "ssh-docker", "--detach",
            "--gpu-ids", "3", "-e", f"NANOCHAT_DOUBLE_FLAGS_DIR={image_flags_dir}", "-e", "NANOCHAT_DOUBLE_STEP_SEC=0.3"]
    started = time.monotonic()
    result = runner(env, *args)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "preflight: mode docker (asked for with --mode docker" in out
    assert f"preflight: image {runner_image} on the host: nanochat a1ccb3d" in out
    assert "preflight: GPUs: the engine passed NVIDIA_VISIBLE_DEVICES=3" in out
    assert "install:" not in out  # docker mode installs nothing on the host
    client = docker_engine.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not client.containers.list(filters={"name": "nanochat-ssh-docker"}):
        time.sleep(0.5)
    container = client.containers.get("nanochat-ssh-docker")
    # The credentials reached the node through the client's stdin, not the container's config (a file on the host).
    config_env = container.attrs["Config"]["Env"] or []
    assert not [e for e in config_env if e.startswith(("AWS_", "RUNNER_PLAN_JSON"))], config_env
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"  # and so the S3 endpoint on the host's loopback is reachable
    environ = container.exec_run(["cat", "/proc/1/environ"]).output.decode().split("\0")
    assert "NVIDIA_VISIBLE_DEVICES=3" in environ
    client.close()
    followed = runner(env, "logs", "-f", handle(host, "ssh-docker"))
    TIMINGS["docker mode over SSH: runner up + logs -f (smoke)"] = time.monotonic() - started
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "run ssh-docker finished" in followed.stdout and "succeeded (exit 0)" in followed.stderr
    status = runner(env, "status", handle(host, "ssh-docker"))
    assert "state:    succeeded (exit 0)" in status.stdout and "docker mode on" in status.stdout, status.stdout + status.stderr
    assert runner(env, "down", handle(host, "ssh-docker")).returncode == 0


def test_docker_mode_with_a_host_folder_writes_as_the_ssh_user(docker_ssh_host, runner_image, image_flags_dir, no_leftover_containers):
    from test_backend_ssh import host_folder

    host = docker_ssh_host
    storage = host_folder(host, "storage-docker")
    env = laptop_env(host)
    args = ["up", "--backend", "ssh", "--host", host.target, "--identity", str(host.client_key), "--mode", "docker",
            "--image", runner_image, "--smoke", "--storage", "storage-docker", "--run-id", "ssh-docker-folder",
            "-e", f"NANOCHAT_DOUBLE_FLAGS_DIR={image_flags_dir}"]
    result = runner(env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (storage / "tokenizer" / "tokenizer.pkl").stat().st_uid == pwd.getpwnam(host.user).pw_uid
    assert (storage / "report" / "report.md").read_text().strip()
    assert runner(env, "down", handle(host, "ssh-docker-folder")).returncode == 0
