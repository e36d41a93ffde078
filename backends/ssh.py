"""The SSH backend: one GPU host you own or rent, reached over SSH, with Docker or bare.

    runner up --backend ssh --host ubuntu@203.0.113.7[:22] [--identity ~/.ssh/key] --smoke --storage s3://bucket/x

1. Connect, the host key checked against known_hosts (ssh_conn.py): an unknown key is an error with its
   fingerprint, never accepted silently (`--accept-new-host-key` adds it, and says so).
2. Preflight over SSH before anything is installed (ssh_preflight.py): nvidia-smi, enough GPUs, a driver new
   enough for CUDA 12.8, free disk for the plan, Docker with the NVIDIA runtime or not.
3. The mode (`--mode auto|docker|bare`): `docker` runs the same image as the local backend on the host's engine
   (`--image TAG` already there, or built there from this checkout); `bare` installs uv, nanochat at the pinned
   commit and the runner under ~/.nanochat-runner with the image's own docker/ scripts (ssh_install.py), once.
4. `runner node run` starts detached in its own session with its pid, log and exit code in a run folder
   (detached.py). The handle `ssh://user@host:port/<run id>[?identity=KEY]` is all `runner logs -f`,
   `status` and `down` need; `runner up` streams the log until the run ends, and Ctrl-C only detaches.
5. Several hosts (`--host A --host B --nodes 2`, ssh_hosts.py): every host is preflighted before anything is
   installed or started on any, then each starts the node agent with the same rendezvous (the first host is the
   leader and the master); one handle covers them all.
6. Storage: `s3://` passes through, its AWS_* credentials sent in the run's environment through stdin (never
   on a command line, in a log or in a file on the host); a plain path is a folder on the host.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, replace
from typing import Iterator

from runner.context import RUN_ID_RE, check_run_id

from . import detached, local_image, ssh_docker, ssh_hosts, ssh_preflight
from .base import Backend, BackendError, Log, PreflightError, Prepared, RunInfo, RunSpec, State
from .launch import ContainerLaunch, GpuRequest, NodeCommand
from .ssh_conn import Connection, Target, known_hosts_path
from .ssh_install import Install

RUNS = detached.RunFolder("$HOME/.nanochat-runner/runs")  # on the host


@dataclass
class Options:
    host: str | None = None
    identity: str | None = None
    accept_new_host_key: bool = False
    mode: str = "auto"
    nanochat_src: str | None = None
    wheelhouse: str | None = None
    hosts: tuple[str, ...] = ()  # every --host, the first one the leader
    master_port: int | None = None  # torchrun's rendezvous port on the first host (several hosts)


@dataclass(frozen=True)
class HostLaunch:
    """What `launch` starts on the host: the node command and, once preflight has looked, the mode, the host's facts
    and the install (bare) or the container (docker)."""

    target: Target
    mode: str  # auto until preflight chooses
    node: NodeCommand
    env_names: tuple[str, ...]
    facts: ssh_preflight.Facts | None = None
    install: Install | None = None
    container: ContainerLaunch | None = None


class SSHBackend(Backend):
    name = "ssh"
    multinode = True

    def __init__(self):
        self.options = Options()
        self._conns: dict[Target, Connection] = {}
        self._log: Log = lambda _m: None

    def configure(self, **options) -> None:
        """The `runner up` options of this backend (--host, --identity, --accept-new-host-key, --mode, ...)."""
        for key, value in options.items():
            if key == "host" and isinstance(value, (tuple, list)):
                self.options.hosts = tuple(value)
                value = value[0] if value else None
            if value is not None:
                setattr(self.options, key, value)

    # -- connections and handles ---------------------------------------------------------------------------------

    def target(self) -> Target:
        if not self.options.host:
            raise BackendError("--backend ssh needs the host: --host USER@HOST[:PORT].",
                               ["Add --host ubuntu@203.0.113.7 (and --identity ~/.ssh/KEY unless ~/.ssh/config or the agent has it)."])
        return Target.parse(self.options.host, self.options.identity)

    def targets(self) -> list[Target]:
        self.target()  # the error for no --host at all
        return [Target.parse(host, self.options.identity) for host in (self.options.hosts or (self.options.host,))]

    def conn(self, target: Target) -> Connection:
        if target not in self._conns:
            self._conns[target] = Connection(target, self.options.accept_new_host_key, self._log)
        return self._conns[target]

    def _locate(self, handle: str) -> tuple[Target, Connection, str]:
        target, run_id = Target.from_url(handle)
        conn = self.conn(target)
        if not run_id:
            _, out = conn.script(RUNS.list_script(), timeout=60)
            runs = out.split() or ["(none)"]
            raise BackendError(f"{handle} names a host, not a run. Runs there: {', '.join(runs)}.",
                               [f"Name one: `runner status {target.url(runs[0] if runs[0] != '(none)' else 'RUN_ID')}`."])
        if not RUN_ID_RE.match(run_id):
            raise BackendError(f"{run_id!r} is not a run id.", ["Use the handle `runner up` printed."])
        return target, conn, run_id

    # -- what the run gets ---------------------------------------------------------------------------------------

    @staticmethod
    def host_path(storage: str) -> str | None:
        """A plain path (or file://) is a folder on the host; s3:// passes through (None)."""
        match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://(.*)$", storage)
        if not match:
            return storage
        protocol = match.group(1).lower()
        if protocol == "file":
            return match.group(2) or "/"
        if protocol in ("s3", "s3a"):
            return None
        raise BackendError(f"Storage {storage!r} cannot be reached from an SSH host.",
                           ["Use s3://BUCKET/PREFIX, or a folder on the host (a plain path such as /data/nanochat)."])

    def _places(self, spec: RunSpec, mode_hint: str) -> dict[str, str]:
        places = {}
        path = self.host_path(spec.storage)
        if path is not None:
            places["storage"] = path
        if spec.scratch or mode_hint != "docker":
            places["scratch"] = spec.scratch or "~/.nanochat-runner/scratch"
        return places

    def _env(self, spec: RunSpec) -> dict[str, str]:
        return {**spec.node_env(), **GpuRequest.parse(spec.gpu_ids, spec.plan.gpus).visible_devices()}

    def prepare(self, spec: RunSpec) -> Prepared:
        targets = self.targets()
        if len(targets) > 1 or spec.plan.nodes > 1:
            ssh_hosts.check_count([str(t) for t in targets], spec.plan.nodes)
        target = targets[0]
        mode = self.options.mode
        summary = (
            f"backend ssh: {target} (host key checked against {known_hosts_path()})",
            f"mode: {mode}" + (" (docker when the host's Docker has the NVIDIA runtime, else bare)" if mode == "auto" else ""),
            f"preflight over SSH: nvidia-smi ({spec.plan.gpus} GPU(s), driver >= {ssh_preflight.MIN_DRIVER_TEXT}), free disk, Docker",
            "bare: uv, nanochat " + spec.plan.commit[:7] + " and the runner under ~/.nanochat-runner (once; skipped when installed)",
            f"docker: image {spec.image or local_image.default_tag(spec.plan)} on the host's engine (built there when missing)",
        )
        request = HostLaunch(target, mode, spec.node_command(), tuple(sorted(self._env(spec))))
        if len(targets) == 1:
            return Prepared(spec, summary, request, self._render)
        port = self.options.master_port or ssh_hosts.DEFAULT_MASTER_PORT
        launch_id = ssh_hosts.new_launch_id(spec.run_id)
        nodes = ssh_hosts.node_commands(spec.node_command(), targets, port, launch_id)
        group = ssh_hosts.HostGroup(tuple(replace(request, target=t, node=n) for t, n in zip(targets, nodes)), launch_id, nodes[0].master)
        summary += (f"{len(targets)} nodes × {spec.plan.gpus} GPU(s): world size {spec.plan.world_size}; leader and torchrun master "
                    f"{group.master}; launch {launch_id}; every host is preflighted before any starts",)
        if self.host_path(spec.storage) is not None:
            summary += ("storage is a folder on each host: the hosts must share it (e.g. NFS); else use s3://",)
        return Prepared(spec, summary, group, self._render_group)

    def _render_group(self, group: ssh_hosts.HostGroup) -> list[str]:
        lines = []
        for rank, request in enumerate(group.launches):
            lines.append(f"node {rank} ({'leader' if rank == 0 else 'follower'}): {request.target}")
            lines += [f"  {line}" for line in self._render(request, ssh_hosts.folder_id(request.node.run_id, rank))[:2]]
        run_id = group.launches[0].node.run_id
        return [*lines, f"handle: {ssh_hosts.group_handle([r.target for r in group.launches], run_id)}"]

    def _render(self, request: HostLaunch, folder: str | None = None) -> list[str]:
        if request.container is not None:
            command = shlex.join(ssh_docker.run_argv(request.container))
        elif request.install is not None:
            command = shlex.join([request.install.runner_bin, *request.node.argv()])
        else:
            command = shlex.join(["runner", *request.node.argv()])
        return [
            f"then: `{command}` detached, in ~/.nanochat-runner/runs/{folder or request.node.run_id}/",
            f"environment sent through stdin (values not shown): {', '.join(request.env_names) or '(none)'}",
            f"handle: {request.target.url(request.node.run_id)}",
        ]

    # -- before starting -----------------------------------------------------------------------------------------

    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        spec = prepared.spec
        check_run_id(spec.run_id)
        self._log = log
        if isinstance(prepared.request, ssh_hosts.HostGroup):
            group = prepared.request
            # Every host's checks first: a host that cannot run stops the run before anything is installed anywhere.
            checked = [self._check_host(spec, request, rank, log) for rank, request in enumerate(group.launches)]
            ready = [self._ready_host(spec, request, facts, mode, rank, log) for rank, (request, (facts, mode)) in enumerate(zip(group.launches, checked))]
            return replace(prepared, request=replace(group, launches=tuple(ready)))
        facts, mode = self._check_host(spec, prepared.request, 0, log)
        return replace(prepared, request=self._ready_host(spec, prepared.request, facts, mode, 0, log))

    def _check_host(self, spec: RunSpec, request: HostLaunch, rank: int, log: Log) -> tuple:
        """Log in and look: GPUs, driver, mode, disk, no run of this id already running there. Changes nothing."""
        target = request.target
        conn = self.conn(target)
        log(f"preflight: logged in to {target}; its host key matches known_hosts")
        places = self._places(spec, self.options.mode)
        if "scratch" in places:
            places["scratch"] = ssh_hosts.scratch_for(rank, spec.scratch)
        code, out = conn.script(ssh_preflight.facts_script(places), timeout=120)
        facts = ssh_preflight.parse_facts(out)
        if code or not facts.home:
            raise PreflightError(f"The preflight script failed on {target} (exit {code}): {out.strip()[-500:]}",
                                 ["The host needs bash and coreutils; check `ssh HOST bash --version`."])
        log(f"preflight: {ssh_preflight.check_gpus(facts, spec.plan.gpus, str(target))}")
        mode, why = ssh_preflight.choose_mode(facts, self.options.mode, str(target))
        log(f"preflight: mode {why}")
        if mode == "docker" and self.options.mode == "auto" and "scratch" not in self._places(spec, "docker"):
            facts.disks = [d for d in facts.disks if d[0] != "scratch"]  # scratch is the container's own disk
        for note in ssh_preflight.check_disk(spec.plan, facts, str(target)):
            log(f"preflight: {note}")
        folder = ssh_hosts.folder_id(spec.run_id, rank)
        info = self._describe(target, conn, folder)
        if info is not None and info.state == State.RUNNING:
            raise PreflightError(f"Run {spec.run_id} is already running on {target} ({info.handle}).",
                                 [f"Follow it: `runner logs -f {info.handle}`, or stop it: `runner down {info.handle}`.", "Or give this run another --run-id."])
        return facts, mode

    def _ready_host(self, spec: RunSpec, request: HostLaunch, facts, mode: str, rank: int, log: Log) -> HostLaunch:
        """Install (bare) or find/build the image (docker) on a checked host; the launch it gets."""
        conn = self.conn(request.target)
        folder = ssh_hosts.folder_id(spec.run_id, rank)
        if mode == "bare":
            install = Install(spec.plan, facts.home, self.options.nanochat_src, self.options.wheelhouse)
            install.ensure(conn, log)
            node = request.node.with_(storage=facts.paths.get("storage") or spec.storage, nanochat_dir=install.nanochat_dir,
                                      scratch=facts.paths["scratch"], plan_file=f"{facts.home}/.nanochat-runner/runs/{folder}/plan.json")
            return replace(request, mode=mode, facts=facts, install=install, node=node)
        image = ssh_docker.ensure_image(conn, spec, log)
        log(f"preflight: {ssh_docker.probe_gpus(conn, spec, image)}")
        container = replace(ssh_docker.container_launch(spec, image, facts, request.node), name=f"nanochat-{folder}")
        return replace(request, mode=mode, facts=facts, container=container)

    # -- the run -------------------------------------------------------------------------------------------------

    def launch(self, prepared: Prepared) -> str:
        spec, request = prepared.spec, prepared.request
        if isinstance(request, ssh_hosts.HostGroup):
            for rank, host in reversed(list(enumerate(request.launches))):  # followers first: they wait for the leader
                self._launch_host(spec, host, ssh_hosts.folder_id(spec.run_id, rank))
            return ssh_hosts.group_handle([host.target for host in request.launches], spec.run_id)
        self._launch_host(spec, request, spec.run_id)
        return request.target.url(spec.run_id)

    def _launch_host(self, spec: RunSpec, request: HostLaunch, folder: str) -> None:
        if request.facts is None:
            raise BackendError("This launch has not been through preflight.", ["Run `runner up` without --dry-run."])
        env = self._env(spec)
        files = {"meta.json": detached.meta_json(run_id=spec.run_id, storage=request.facts.paths.get("storage", spec.storage), mode=request.mode,
                                                    started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                                                    container=request.container.name if request.container else "")}
        if request.container is None:
            files["plan.json"] = json.dumps(spec.plan.to_dict(), indent=1)
            files["run.sh"] = RUNS.run_sh(folder, "bare", [request.install.runner_bin, *request.node.argv()])
        else:
            env["RUNNER_PLAN_JSON"] = json.dumps(spec.plan.to_dict())
            files["run.sh"] = RUNS.run_sh(folder, "docker", ssh_docker.run_argv(request.container), sorted(env))
        code, out = self.conn(request.target).script(RUNS.launch_script(folder, files, env), timeout=120)
        if code or "pid=" not in out:
            raise BackendError(f"Starting the run on {request.target} failed (exit {code}): {out.strip()[-500:]}",
                               ["Check the free disk in the home folder on the host, then run this again."])

    def _describe(self, target: Target, conn: Connection, run_id: str) -> RunInfo | None:
        return detached.describe(conn, RUNS, run_id, target.url(run_id), str(target))

    def describe(self, handle: str) -> RunInfo:
        target, conn, run_id = self._locate(handle)
        info = self._describe(target, conn, run_id)
        if followers := ssh_hosts.followers_in(handle):
            infos = [info, *(self._describe(t, self.conn(t), ssh_hosts.folder_id(run_id, rank)) for rank, t in enumerate(followers, 1))]
            info = ssh_hosts.combined(handle, infos)
        return detached.require(info, run_id, str(target), f"`runner status {target.url()}` lists the runs there.")

    def list_runs(self) -> list[RunInfo]:
        target = self.target()
        conn = self.conn(target)
        return [info for run_id in detached.list_ids(conn, RUNS) if (info := self._describe(target, conn, run_id))]

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        _, conn, run_id = self._locate(handle)
        self.describe(handle)  # a clear error for an unknown run
        yield from detached.logs(conn, RUNS, run_id, follow, tail)

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        info = self.describe(handle)
        target, conn, run_id = self._locate(handle)
        followers = ssh_hosts.followers_in(handle)
        if not followers:
            return detached.cancel(conn, RUNS, info, grace_sec)
        # Every host: the leader first (its end record lets followers stop on their own), then the followers.
        for rank, node in enumerate([target, *followers]):
            node_info = self._describe(node, self.conn(node), ssh_hosts.folder_id(run_id, rank))
            if node_info is not None:
                detached.cancel(self.conn(node), RUNS, node_info, grace_sec)
        return info
