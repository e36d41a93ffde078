"""The local backend: one detached container on a Docker engine on this machine (an owned 8×H100 box).

`launch` starts the image with `runner node run` as its command, the plan in RUNNER_PLAN_JSON, the GPUs asked for
(a count, "all", or device ids), `ipc=host` (NCCL's shared-memory transport needs more than Docker's 64 MB /dev/
shm), and the storage: a local folder is bind-mounted at /storage and written as the calling user, an s3:// URL
is passed through with the AWS_* variables set here. The container is named `nanochat-<run id>` and labelled with
the run id and storage URL, so `local://nanochat-<run id>` (or the bare run id) finds it from any terminal. It is
never removed automatically: its logs and exit code stay until `runner down`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from runner.storage import parse_options, split_url

from . import local_image, preflight
from .base import Backend, BackendError, Log, PreflightError, Prepared, RunInfo, RunSpec, State, split_handle, state_from_exit
from .launch import ContainerLaunch, GpuRequest, Mount, docker_run_argv, docker_sdk_kwargs

LABEL_RUN = "org.nanochat-runner.run-id"
LABEL_STORAGE = "org.nanochat-runner.storage"
NAME_PREFIX = "nanochat-"
CONTAINER_STORAGE = "/storage"
CONTAINER_SCRATCH = "/scratch"
ENGINE_TIMEOUT_SEC = 600  # builds and `stop` with a long grace period go through the same client
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def engine_is_local() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def connect():
    """A client for the engine DOCKER_HOST names (default: the local socket), proven to answer."""
    try:
        import docker
    except ImportError:
        raise BackendError("The Docker SDK for Python is not installed.", ["pip install 'docker>=7' (it comes with nanochat-runner)."]) from None
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT_SEC)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise BackendError(
            f"Cannot reach the Docker engine at {where} ({e}).",
            [
                "Start it: `sudo systemctl start docker` (install: https://docs.docker.com/engine/install/).",
                "Let your user use it: `sudo usermod -aG docker $USER`, then log in again.",
                "Or point DOCKER_HOST at the engine you mean.",
            ],
        ) from None


class LocalBackend(Backend):
    name = "local"

    def __init__(self):
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = connect()
        return self._client

    # -- what the container gets ---------------------------------------------------------------------------------

    def storage_mount(self, spec: RunSpec) -> tuple[str, tuple[Mount, ...], str | None]:
        """(storage URL inside the container, mounts, host folder or None)."""
        protocol, path = split_url(spec.storage)
        if protocol == "file":
            if not engine_is_local():
                raise BackendError(
                    f"Storage {spec.storage} is a folder on this machine, but the engine ({os.environ['DOCKER_HOST']}) is elsewhere.",
                    ["Use s3://BUCKET/PREFIX storage, or run `runner up` on the engine's machine."],
                )
            return CONTAINER_STORAGE, (Mount(path, CONTAINER_STORAGE),), path
        if protocol == "memory":
            raise BackendError("memory:// storage lives inside one process; a container cannot reach it.", ["Use a folder or s3://BUCKET/PREFIX."])
        return spec.storage, (), None

    def network_mode(self, spec: RunSpec) -> str | None:
        """Host networking when the S3 endpoint is this machine's loopback, which a bridged container cannot reach."""
        options = parse_options(spec.storage_options)
        env = spec.node_env()
        endpoint = options.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        host = urlparse(str(endpoint)).hostname or ""
        return "host" if host in LOOPBACK or host.startswith("127.") else None

    def container_launch(self, spec: RunSpec, image: str) -> ContainerLaunch:
        """The run's container: `runner node run` with the plan in RUNNER_PLAN_JSON, its GPUs, storage and scratch."""
        storage_url, mounts, host_folder = self.storage_mount(spec)
        if spec.scratch:
            mounts += (Mount(str(Path(spec.scratch).expanduser().resolve()), CONTAINER_SCRATCH),)
        return ContainerLaunch(
            image=image,
            args=tuple(spec.node_command(storage_url).argv()),
            name=NAME_PREFIX + spec.run_id,
            gpus=GpuRequest.parse(spec.gpu_ids, spec.plan.gpus),
            env={"RUNNER_PLAN_JSON": json.dumps(spec.plan.to_dict()), **spec.node_env()},
            mounts=mounts,
            # Files in a bind-mounted folder belong to whoever runs `runner up`, not to the image's user.
            user=f"{os.getuid()}:{os.getgid()}" if host_folder or spec.scratch else None,
            network=self.network_mode(spec),
            labels={LABEL_RUN: spec.run_id, LABEL_STORAGE: host_folder or spec.storage},
        )

    def prepare(self, spec: RunSpec) -> Prepared:
        image = spec.image or local_image.default_tag(spec.plan)
        built = "found on the engine, or built from this repository's Dockerfile" if not spec.rebuild else "rebuilt"
        summary = (
            f"backend local: one container on the Docker engine at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}",
            f"image {image} ({built}, nanochat {spec.plan.commit[:7]})",
            "preflight: engine, storage, free disk, image's nanochat commit, a GPU probe container",
        )
        return Prepared(spec, summary, self.container_launch(spec, image), self._render)

    def _render(self, launch: ContainerLaunch) -> list[str]:
        return [
            "then (environment values are not shown; RUNNER_PLAN_JSON holds the plan):",
            "  " + shlex.join(docker_run_argv(launch)),
            f"handle: {self.handle_for(launch.name)}",
        ]

    # -- before starting -----------------------------------------------------------------------------------------

    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        """Cheap checks first (engine, storage, disk), then the image (built if missing), then a GPU probe."""
        spec = prepared.spec
        version = self.client.version()
        log(f"preflight: engine Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})")
        _, _, host_folder = self.storage_mount(spec)
        places = []
        if host_folder:
            try:
                Path(host_folder).mkdir(parents=True, exist_ok=True)  # created by us, so owned by the caller
                probe = Path(host_folder) / ".runner-write-probe"
                probe.write_text("ok")
                probe.unlink()
            except OSError as e:
                raise PreflightError(f"Cannot write to the storage folder {host_folder} ({e}).", ["Use a folder you can write to, or fix its permissions."]) from None
            places.append(preflight.DiskPlace("storage", Path(host_folder), "point --storage at a bigger disk, or use s3://BUCKET/PREFIX"))
        if spec.scratch:
            places.append(preflight.DiskPlace("scratch", Path(spec.scratch), "point --scratch at a bigger disk"))
        elif engine_is_local():
            root = self.client.info().get("DockerRootDir", "")
            if root and Path(root).exists():
                places.append(preflight.DiskPlace("scratch in the engine's data-root", Path(root), "pass --scratch DIR on a bigger local disk"))
        for note in preflight.check_disk(spec.plan, places):
            log(f"preflight: {note}")
        image = local_image.ensure(self.client, spec, log)
        log(f"preflight: {local_image.check_commit(self.client, image, spec.plan)}")
        log(f"preflight: {self.probe_gpus(spec, image)}")
        existing = self._find(NAME_PREFIX + spec.run_id)
        if existing is not None and existing.status in ("running", "restarting", "paused", "created"):
            handle = self.handle_for(existing.name)
            raise PreflightError(f"Run {spec.run_id} is already running ({handle}).", [f"Follow it: `runner logs -f {handle}`, or stop it: `runner down {handle}`.", "Or give this run another --run-id."])
        return replace(prepared, request=replace(prepared.request, image=image))

    def probe_gpus(self, spec: RunSpec, image: str | None = None) -> str:
        """Start a throwaway container with the run's GPU request: the only real test that the engine can do it."""
        import docker

        gpus = GpuRequest.parse(spec.gpu_ids, spec.plan.gpus)
        container = self.client.containers.create(
            image or spec.image, entrypoint=["/bin/sh", "-c", preflight.PROBE_SCRIPT], command=[], device_requests=[gpus.device_request()],
            network_mode="none", labels={"org.nanochat-runner.probe": spec.run_id},
        )
        output, code, start_error = "", None, ""
        try:
            container.start()
            code = container.wait(timeout=120).get("StatusCode")
            output = container.logs().decode(errors="replace")
        except docker.errors.APIError as e:
            start_error = str(e.explanation or e)
        finally:
            container.remove(force=True)
        return preflight.probe_verdict(output, code, start_error, spec.plan.gpus)

    # -- the run -------------------------------------------------------------------------------------------------

    def launch(self, prepared: Prepared) -> str:
        import docker

        kwargs = docker_sdk_kwargs(prepared.request)
        old = self._find(kwargs["name"])
        if old is not None:  # a finished earlier attempt under this run id: storage keeps its progress, not the container
            old.remove(force=True)
        container = self.client.containers.create(**kwargs)
        try:
            container.start()
        except docker.errors.APIError as e:
            container.remove(force=True)
            preflight.probe_verdict("", None, str(e.explanation or e), prepared.spec.plan.gpus)  # raises the explained error
            raise
        return self.handle_for(container.name)

    def _find(self, name: str):
        import docker

        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def container(self, handle: str):
        """The run's container from a handle, a container name or a bare run id."""
        scheme, ident = split_handle(handle)
        if scheme and scheme != self.name:
            raise BackendError(f"{handle} is not a local run.", [f"Use the {scheme} backend's commands for it."])
        for name in (ident, NAME_PREFIX + ident):
            found = self._find(name)
            if found is not None and LABEL_RUN in (found.labels or {}):
                return found
        raise BackendError(f"No run {ident!r} on this Docker engine.", ["`runner status` lists the runs this engine has.", "A run removed with `runner down` is gone (its storage is not)."])

    def _info(self, container) -> RunInfo:
        state = container.attrs.get("State", {})
        status = state.get("Status", container.status)
        if status in ("created",):
            run_state = State.PENDING
        elif status in ("running", "restarting", "paused"):
            run_state = State.RUNNING
        elif status in ("exited", "dead"):
            run_state = state_from_exit(state.get("ExitCode"))
        else:
            run_state = State.UNKNOWN
        finished = state.get("FinishedAt", "") if run_state.is_terminal() else ""
        return RunInfo(
            handle=self.handle_for(container.name),
            run_id=container.labels.get(LABEL_RUN, ""),
            state=run_state,
            exit_code=state.get("ExitCode") if run_state.is_terminal() else None,
            started_at=state.get("StartedAt", "")[:19],
            finished_at=finished[:19],
            storage=container.labels.get(LABEL_STORAGE, ""),
            detail=f"container {container.name} ({status})",
        )

    def describe(self, handle: str) -> RunInfo:
        return self._info(self.container(handle))

    def list_runs(self) -> list[RunInfo]:
        containers = self.client.containers.list(all=True, filters={"label": LABEL_RUN})
        return sorted((self._info(c) for c in containers), key=lambda info: info.started_at)

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        container = self.container(handle)
        chunks = container.logs(stream=True, follow=follow, tail=tail if tail is not None else "all")
        pending = b""
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace") + "\n"
        if pending:
            yield pending.decode(errors="replace")

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        container = self.container(handle)
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=int(grace_sec))
        container.reload()
        info = self._info(container)
        container.remove(force=True)
        return info
