"""`runner chat RUN --backend local`: the chat in a container of the run's image on the local engine.

The container runs `runner chat` (staging the run's final checkpoint from storage, then nanochat's chat CLI or web
UI) with host networking, so the web UI's 127.0.0.1 inside is this machine's 127.0.0.1: no port is published to
the network. It uses the docker CLI because an interactive chat needs the terminal attached as-is. Secrets are
passed by name (`-e NAME`), their values taken from this process's environment, never put on a command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from . import local_image
from .base import BackendError, RunSpec
from .launch import ContainerLaunch, GpuRequest, docker_run_argv
from .local import LocalBackend


def chat_in_container(plan, storage: str, storage_options: list[str], chat_args: list[str], image: str | None,
                      extra_env: dict[str, str], log) -> int:
    docker = shutil.which("docker")
    if docker is None:
        raise BackendError("The docker command is not installed here.", ["Install Docker's CLI (it comes with Docker Engine or Desktop).", "Or chat on the node itself: runner chat RUN --storage URL"])
    backend = LocalBackend()
    spec = RunSpec(plan=plan, storage=storage, storage_options=list(storage_options), image=image, env=dict(extra_env))
    tag = local_image.ensure(backend.client, spec, log)
    storage_url, mounts, host_folder = backend.storage_mount(spec)
    env = spec.node_env()
    options = [a for option in storage_options for a in ("--storage-option", option)]
    launch = ContainerLaunch(
        image=tag, args=("chat", plan.run_id, "--storage", storage_url, *options, *chat_args), name=f"nanochat-chat-{plan.run_id}",
        gpus=GpuRequest(1), env=env, mounts=mounts, user=f"{os.getuid()}:{os.getgid()}" if host_folder else None, network="host",
    )
    flags = ["--rm"]
    if sys.stdin.isatty() and "-p" not in chat_args and "--web" not in chat_args:
        flags.append("-it")  # an interactive conversation
    argv = docker_run_argv(launch, run_flags=tuple(flags))
    log(f"chat in a container of {tag} on the local engine")
    # Variables go by name (--env=NAME): their values come from this environment, not from the command line.
    return subprocess.call([docker, *argv[1:]], env={**os.environ, **env})
