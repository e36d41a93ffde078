"""One description of a node launch, built once, rendered by each backend.

Every backend starts the same thing: `runner node run` with typed options (`NodeCommand`), on a machine with the
plan's GPUs (`GpuRequest`), usually inside the runner's image (`ContainerLaunch`: image, mounts, user, network,
environment names, labels). A backend builds that description once from the `RunSpec`; small renderers here turn it
into what an engine takes: keyword arguments for the Docker SDK, a `docker run` argv (for an SSH host's engine and
for the dry run a person reads). The dry run is rendered from the same object the backend launches, so the two
cannot drift; node options are never turned into strings anywhere but `NodeCommand.argv`, and never parsed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from runner.errors import RunnerError


DEFAULT_HEARTBEAT_SEC = 60.0  # the node agent's --heartbeat-sec default


class LaunchError(RunnerError):
    """The launch asked for cannot be described (GPU ids that do not match the plan, ...)."""


@dataclass(frozen=True)
class NodeCommand:
    """`runner node run` and its options as typed values; `argv()` is the only place they become strings."""

    storage: str  # the storage URL as the node sees it (a container path for a bind-mounted folder)
    run_id: str
    storage_options: tuple[str, ...] = ()
    offline: bool = False
    force: bool = False
    fresh: bool = False  # --only/--from start a resumable phase over instead of resuming it
    from_phase: str | None = None
    only_phase: str | None = None
    heartbeat_sec: float | None = None
    plan_file: str | None = None  # None: the plan arrives in RUNNER_PLAN_JSON
    nanochat_dir: str | None = None
    scratch: str | None = None
    # Several nodes: this node's place in the run (None: one node, or the engine states it, e.g. Slurm's SLURM_*).
    nnodes: int | None = None
    node_rank: int | None = None
    master: str | None = None  # ADDR:PORT of node rank 0's torchrun rendezvous
    launch_id: str | None = None
    lease_wait_sec: float | None = None  # a retry: wait for the lost attempt's lease (same run id) to expire

    def argv(self) -> list[str]:
        """The runner's arguments (the program itself is the image's entrypoint or the host's `runner`)."""
        argv = ["node", "run", "--storage", self.storage, "--run-id", self.run_id]
        for option in self.storage_options:
            argv += ["--storage-option", option]
        argv += ["--plan", self.plan_file] if self.plan_file else []
        argv += ["--nanochat-dir", self.nanochat_dir] if self.nanochat_dir else []
        argv += ["--scratch", self.scratch] if self.scratch else []
        argv += ["--offline"] if self.offline else []
        argv += ["--force"] if self.force else []
        argv += ["--fresh"] if self.fresh else []
        argv += ["--from", self.from_phase] if self.from_phase else []
        argv += ["--only", self.only_phase] if self.only_phase else []
        argv += ["--heartbeat-sec", f"{self.heartbeat_sec:g}"] if self.heartbeat_sec is not None else []
        argv += ["--nnodes", str(self.nnodes)] if self.nnodes is not None else []
        argv += ["--node-rank", str(self.node_rank)] if self.node_rank is not None else []
        argv += ["--master", self.master] if self.master else []
        argv += ["--launch-id", self.launch_id] if self.launch_id else []
        argv += ["--lease-wait", f"{self.lease_wait_sec:g}"] if self.lease_wait_sec else []
        return argv

    def continuing(self) -> "NodeCommand":
        """What a retry or a later segment runs: no forcing, so finished phases skip and training resumes; and a
        lost attempt (preempted, killed) may still hold the model's lease in storage, so it waits for that to expire."""
        from runner.lease import EXPIRY_HEARTBEATS

        lease_wait = (EXPIRY_HEARTBEATS + 1) * (self.heartbeat_sec or DEFAULT_HEARTBEAT_SEC)
        return replace(self, force=False, fresh=False, from_phase=None, only_phase=None, lease_wait_sec=lease_wait)

    def with_(self, **changes) -> "NodeCommand":
        return replace(self, **changes)


@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs a node gets: the plan's count, every GPU there is, or named devices."""

    count: int
    ids: tuple[str, ...] = ()
    every: bool = False

    @classmethod
    def parse(cls, text: str | None, count: int) -> "GpuRequest":
        """From `--gpu-ids all|ID,ID` (None: the plan's count)."""
        text = (text or "").strip()
        if text == "all":
            return cls(count, every=True)
        ids = tuple(d.strip() for d in text.split(",") if d.strip())
        if ids and len(ids) != count:
            raise LaunchError(
                f"--gpu-ids names {len(ids)} device(s) but the plan runs on {count}.",
                [f"Name {count} devices, or make the plan for {len(ids)} with --gpus {len(ids)}."],
            )
        return cls(count, ids=ids)

    def docker_flag(self) -> str:
        """The value of `docker run --gpus` (device lists are quoted: docker reads the value as CSV)."""
        if self.every:
            return "all"
        return f'"device={",".join(self.ids)}"' if self.ids else str(self.count)

    def device_request(self):
        """The Docker SDK's request for these GPUs."""
        from docker.types import DeviceRequest

        if self.every:
            return DeviceRequest(count=-1, capabilities=[["gpu"]])
        if self.ids:
            return DeviceRequest(device_ids=list(self.ids), capabilities=[["gpu"]])
        return DeviceRequest(count=self.count, capabilities=[["gpu"]])

    def visible_devices(self) -> dict[str, str]:
        """For a node without a container: CUDA_VISIBLE_DEVICES when devices are named."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.ids)} if self.ids else {}


@dataclass(frozen=True)
class Mount:
    source: str  # a folder on the machine that runs the container
    target: str  # where the container sees it
    mode: str = "rw"


@dataclass(frozen=True)
class ContainerLaunch:
    """One container of the runner's image: what it runs, with which GPUs, folders, user, network and variables."""

    image: str
    args: tuple[str, ...]  # the runner's arguments (the image's entrypoint is `runner`)
    name: str
    gpus: GpuRequest
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # values are never rendered as text
    mounts: tuple[Mount, ...] = ()
    user: str | None = None  # uid:gid, so files in bind-mounted folders belong to their owner
    network: str | None = None  # "host", or the engine's default
    labels: Mapping[str, str] = field(default_factory=dict)
    # NCCL's shared-memory transport needs more than Docker's 64 MB /dev/shm; an init process reaps torchrun's
    # children and forwards `docker stop`'s SIGTERM to the node agent.
    ipc_host: bool = True
    init: bool = True


def docker_sdk_kwargs(launch: ContainerLaunch) -> dict:
    """Keyword arguments of the Docker SDK's `containers.create`."""
    kwargs = {
        "image": launch.image,
        "command": list(launch.args),
        "name": launch.name,
        "labels": dict(launch.labels),
        "environment": dict(launch.env),
        "volumes": {m.source: {"bind": m.target, "mode": m.mode} for m in launch.mounts},
        "device_requests": [launch.gpus.device_request()],
        "init": launch.init,
        # No ulimit changes: an unlimited memlock matters for RDMA between nodes, not for one node's NVLink, and
        # engines in restricted environments refuse to raise it.
    }
    if launch.ipc_host:
        kwargs["ipc_mode"] = "host"
    if launch.user:
        kwargs["user"] = launch.user
    if launch.network:
        kwargs["network_mode"] = launch.network
    return kwargs


def docker_run_argv(launch: ContainerLaunch, run_flags: tuple[str, ...] = ("--detach",), wrapper: tuple[str, ...] = ()) -> list[str]:
    """`docker run ...` for the same container. Variables appear by name only (`--env=NAME` takes the value from
    the caller's environment); with `wrapper` = (entrypoint, its args...), the container starts the wrapper, which
    gets the runner's arguments after its own (the SSH backend's wrapper reads the variables from stdin instead)."""
    argv = ["docker", "run", *run_flags, "--name", launch.name]
    argv += ["--init"] if launch.init else []
    argv += ["--ipc=host"] if launch.ipc_host else []
    argv.append(f"--gpus={launch.gpus.docker_flag()}")
    argv += [f"--label={k}={v}" for k, v in launch.labels.items()]
    argv += [f"--volume={m.source}:{m.target}" + ("" if m.mode == "rw" else f":{m.mode}") for m in launch.mounts]
    argv += [f"--user={launch.user}"] if launch.user else []
    argv += [f"--network={launch.network}"] if launch.network else []
    if wrapper:
        return [*argv, "--entrypoint", wrapper[0], launch.image, *wrapper[1:], *launch.args]
    argv += [f"--env={name}" for name in launch.env]
    return [*argv, launch.image, *launch.args]
