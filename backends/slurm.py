"""The Slurm backend: one sbatch job, one node agent per node, on a cluster you already have.

    runner up --backend slurm --nodes 2 --partition gpu --time 12:00:00 --requeue --storage s3://bucket/run
              [--host user@login.cluster] [--container pyxis|apptainer --image REGISTRY/IMAGE] [--sbatch-arg qos=high]

1. `prepare` renders the one sbatch script from the plan (slurm_script.py); `--dry-run` prints it exactly.
2. `preflight` asks the cluster (sinfo, scontrol on the submit host) whether the partition exists and is up, has
   the nodes and GPUs per node, and whether the time limit fits the plan's estimate (slurm_preflight.py); without
   a container and without `--runner-bin`, it installs the runner and nanochat once into the submit host's
   ~/.nanochat-runner as the SSH backend's bare mode does (the nodes must share that home folder).
3. `launch` writes the script into ~/.nanochat-runner/slurm/ on the submit host and submits it there with
   `sbatch`: on this machine where sbatch is on the PATH, or on a login node over SSH (`--host`, host key
   checked as for the SSH backend). The node's variables (credentials, --env) are exported in a script sent
   through stdin, so sbatch hands them to the job (--export=ALL) without a command line or file holding them.
4. The handle `slurm://JOBID` (`slurm://user@login:port/JOBID` over SSH) finds the job again: `runner status`
   (scontrol, else sacct), `runner logs -f` (the job's output file), `runner down` (SIGTERM to the node agents,
   a grace period, scancel); slurm_jobs.py holds that bash.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, quote, urlsplit

from runner.context import RUN_ID_RE, check_run_id

from . import slurm_jobs, slurm_preflight
from .base import Backend, BackendError, Log, PreflightError, Prepared, RunInfo, RunSpec, State
from .detached import parse_lines, q
from .here import LocalShell
from .slurm_script import SlurmJob, parse_sbatch_args, parse_time, render
from .ssh_conn import Connection, Target, tar_stream

JOB_ID_RE = re.compile(r"^\d+$")


@dataclass
class Options:
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    sbatch_args: tuple[str, ...] = ()
    container: str = "none"
    runner_bin: str | None = None
    node_gpus: int | None = None
    requeue: bool = False
    signal_before: int = 120
    host: str | None = None
    identity: str | None = None
    accept_new_host_key: bool = False
    nanochat_src: str | None = None
    wheelhouse: str | None = None


class LocalHost(LocalShell):
    """This machine as the submit host: bash through stdin, and folders copied in place of an upload."""

    target = "this machine"

    def upload(self, files: dict[str, Path], remote_dir: str, timeout: float = 3600) -> None:
        folder = os.path.expandvars(remote_dir)
        Path(folder).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(["tar", "-xf", "-", "-C", folder], stdin=subprocess.PIPE)
        for chunk in tar_stream(files):
            proc.stdin.write(chunk)
        proc.stdin.close()
        if proc.wait(timeout=timeout):
            raise BackendError(f"Copying {', '.join(map(str, files.values()))} to {folder} failed.", ["Check the free disk there, then run this again."])


@dataclass(frozen=True)
class SlurmLaunch:
    target: Target | None  # None: sbatch on this machine
    job: SlurmJob
    notes: tuple[str, ...] = ()  # what preflight found

    @property
    def where(self) -> str:
        return str(self.target) if self.target else "this machine"


class SlurmBackend(Backend):
    name = "slurm"
    multinode = True

    def __init__(self):
        self.options = Options()
        self._shells: dict[Target | None, object] = {}
        self._log: Log = lambda _m: None

    def configure(self, **options) -> None:
        """The `runner up` options of this backend (slurm_options.py)."""
        for key, value in options.items():
            if key == "host" and isinstance(value, (tuple, list)):
                if len(value) > 1:
                    raise BackendError(f"--backend slurm submits on one login node; got {len(value)} --host options.",
                                       ["Give one --host USER@LOGIN; the cluster places the nodes (--nodes N)."])
                value = value[0] if value else None
            if value is not None and value != ():
                setattr(self.options, key, value)

    # -- the submit host and handles -----------------------------------------------------------------------------

    def _target(self) -> Target | None:
        return Target.parse(self.options.host, self.options.identity) if self.options.host else None

    def shell(self, target: Target | None):
        if target not in self._shells:
            self._shells[target] = Connection(target, self.options.accept_new_host_key, self._log) if target else LocalHost()
        return self._shells[target]

    def handle(self, target: Target | None, job_id: str) -> str:
        if target is None:
            return f"slurm://{job_id}"
        query = f"?identity={quote(target.identity)}" if target.identity else ""
        return f"slurm://{target.user}@{target.host}:{target.port}/{job_id}{query}"

    def parse_handle(self, handle: str) -> tuple[Target | None, str]:
        parts = urlsplit(handle if "://" in handle else f"slurm://{handle}")
        if parts.path.strip("/"):
            identity = parse_qs(parts.query).get("identity", [None])[0]
            target = Target(parts.username or getpass.getuser(), parts.hostname or "", parts.port or 22, identity)
            job_id = parts.path.strip("/")
        else:
            target, job_id = None, parts.netloc
        if not JOB_ID_RE.match(job_id):
            raise BackendError(f"{handle!r} names no Slurm job id.", ["Use the handle `runner up` printed: slurm://JOBID or slurm://USER@LOGIN:PORT/JOBID."])
        return target, job_id

    def handle_for(self, ident: str) -> str:
        return ident if ident.startswith("slurm://") else f"slurm://{ident}"

    # -- the job -------------------------------------------------------------------------------------------------

    def _storage(self, spec: RunSpec, remote: bool) -> tuple[str, str | None]:
        """(storage as the nodes see it, the folder when it is one): a plain path must be on a filesystem every node
        and the submit host share; s3:// passes through."""
        match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://(.*)$", spec.storage)
        if match and match.group(1).lower() in ("s3", "s3a"):
            return spec.storage, None
        if match and match.group(1).lower() != "file":
            raise BackendError(f"Storage {spec.storage!r} cannot be reached from Slurm nodes.",
                               ["Use s3://BUCKET/PREFIX, or a folder on a filesystem all nodes share (e.g. /shared/nanochat)."])
        path = match.group(2) if match else spec.storage
        if remote:
            if not path.startswith("/"):
                raise BackendError(f"--storage {path!r} must be an absolute path on the cluster's shared filesystem.", ["E.g. --storage /shared/$USER/nanochat."])
            return path, path
        folder = str(Path(path).expanduser().resolve())
        return folder, folder

    def prepare(self, spec: RunSpec) -> Prepared:
        plan, o = spec.plan, self.options
        if spec.gpu_ids:
            raise BackendError("--gpu-ids does not apply to Slurm: the scheduler picks each node's GPUs.", ["Drop --gpu-ids; --gpus sets GPUs per node."])
        target = self._target()
        storage, folder = self._storage(spec, remote=target is not None)
        scratch = str(Path(spec.scratch).expanduser().resolve()) if spec.scratch and target is None else spec.scratch
        parse_time(o.time_limit)  # refuse a malformed --time now
        job = SlurmJob(
            run_id=spec.run_id, nodes=plan.nodes, node=spec.node_command(storage=storage), plan_json=json.dumps(plan.to_dict()),
            runner=tuple(shlex.split(o.runner_bin)) if o.runner_bin else ("runner",),
            gpus_per_node=plan.gpus if plan.on_gpus and o.node_gpus is None else 0, exclusive=plan.on_gpus,
            partition=o.partition, account=o.account, time=o.time_limit, requeue=bool(o.requeue), signal_before_sec=o.signal_before,
            sbatch_args=parse_sbatch_args(o.sbatch_args), container=o.container, image=spec.image,
            mounts=tuple(m for m in (folder, scratch) if m), scratch_per_node=scratch, env_names=tuple(sorted(spec.node_env())),
        )
        render(job)  # refuse what cannot be rendered (a container without an image) before anything else
        where = str(target) if target else "this machine"
        summary = (
            f"backend slurm: sbatch on {where}" + (" (host key checked against known_hosts)" if target else ""),
            f"job: {plan.where()}, one node agent per node (srun); node rank 0 = the job's first node",
            "preflight: sinfo/scontrol (partition, nodes, GPUs per node, time limit against the plan's estimate)",
            "runner on the nodes: " + (f"the image {spec.image} ({o.container})" if o.container != "none" else
                                       shlex.join(job.runner) if o.runner_bin else "installed once into the submit host's ~/.nanochat-runner (shared home)"),
            f"storage on the nodes: {storage}" + (" (a folder every node must see)" if folder else ""),
            "the sbatch script:",
        )
        return Prepared(spec, summary, SlurmLaunch(target, job), self._render)

    def _render(self, request: SlurmLaunch) -> list[str]:
        return [*render(request.job).splitlines(), f"handle: {self.handle(request.target, 'JOBID')} (the job id sbatch returns)"]

    # -- before submitting ---------------------------------------------------------------------------------------

    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        spec, request, o = prepared.spec, prepared.request, self.options
        check_run_id(spec.run_id)
        self._log = log
        shell, where, job = self.shell(request.target), request.where, request.job
        _, out = shell.script(slurm_preflight.facts_script(job.job_name), timeout=120)  # judged by what it printed
        facts = slurm_preflight.parse_facts(out)
        if not facts.has_sbatch:
            raise PreflightError(f"sbatch is not on the PATH of {where}.",
                                 ["Submit from the cluster's login node: --host USER@LOGIN." if request.target is None else
                                  "Load Slurm's commands in the login shell's profile (e.g. `module load slurm`)."])
        partition = slurm_preflight.choose_partition(facts, o.partition)
        notes = [f"partition {partition.name}", slurm_preflight.check_nodes(facts, partition, spec.plan, o.node_gpus)]
        notes += slurm_preflight.check_time(spec.plan, partition, o.time_limit, o.signal_before, bool(o.requeue))
        notes += [n for n in [slurm_preflight.check_container(facts, o.container, where)] if n]
        if facts.active_jobs:
            handle = self.handle(request.target, facts.active_jobs[0])
            raise PreflightError(f"Run {spec.run_id} is already queued or running on the cluster (job {', '.join(facts.active_jobs)}).",
                                 [f"Follow it: `runner logs -f {handle}`, or stop it: `runner down {handle}`.", "Or give this run another --run-id."])
        for note in notes:
            log(f"preflight: {note}")
        if o.container == "none" and not o.runner_bin:
            from .ssh_install import Install

            install = Install(spec.plan, facts.home, o.nanochat_src, o.wheelhouse)
            install.ensure(shell, log)
            job = replace(job, runner=(install.runner_bin,), node=job.node.with_(nanochat_dir=install.nanochat_dir))
        if job.mounts and job.node.storage in job.mounts:
            shell.script(f"mkdir -p {q(job.node.storage)}\n", timeout=60)
        return replace(prepared, request=replace(request, job=job, notes=tuple(notes)))

    # -- the run -------------------------------------------------------------------------------------------------

    def launch(self, prepared: Prepared) -> str:
        spec, request = prepared.spec, prepared.request
        if not request.notes:
            raise BackendError("This launch has not been through preflight.", ["Run `runner up` without --dry-run."])
        import base64

        script = render(request.job)
        meta = json.dumps({"run_id": spec.run_id, "storage": request.job.node.storage, "nodes": request.job.nodes,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())})
        name = f"{request.job.job_name}.sbatch"
        lines = ["set -euo pipefail", f'd="{slurm_jobs.SUBMIT_DIR}"', 'mkdir -p "$d"', 'cd "$d"',
                 f"printf %s {q(base64.b64encode(script.encode()).decode())} | base64 -d > {q(name)}"]
        lines += [f"export {k}={q(v)}" for k, v in spec.node_env().items()]
        lines += [f"out=$(sbatch --parsable {q(name)} 2>&1) || {{ echo \"sbatch failed: $out\"; exit 1; }}",
                  'id=${out%%;*}', f"printf '%s\\n' {q(meta)} > \"$d/$id.json\"", 'echo "job=$id"']
        code, out = self.shell(request.target).script("\n".join(lines) + "\n", timeout=120)
        job_id = parse_lines(out).get("job", "")
        if code or not JOB_ID_RE.match(job_id):
            raise BackendError(f"Submitting the job on {request.where} failed (exit {code}): {out.strip()[-800:]}",
                               ["Read sbatch's words above (a partition, account or QOS it refuses), fix the option, and run this again."])
        return self.handle(request.target, job_id)

    def _locate(self, handle: str):
        target, job_id = self.parse_handle(handle)
        return target, job_id, self.shell(target), str(target) if target else "this machine"

    def describe(self, handle: str) -> RunInfo:
        target, job_id, shell, where = self._locate(handle)
        return slurm_jobs.require(slurm_jobs.describe(shell, job_id, self.handle(target, job_id), where), job_id, where)

    def list_runs(self) -> list[RunInfo]:
        target = self._target()
        shell, where = self.shell(target), str(target) if target else "this machine"
        found = (slurm_jobs.describe(shell, job_id, self.handle(target, job_id), where) for job_id in slurm_jobs.list_ids(shell))
        return [info for info in found if info is not None]

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        self.describe(handle)  # a clear error for an unknown job
        _, job_id, shell, _ = self._locate(handle)
        yield from slurm_jobs.stream_logs(shell, job_id, follow, tail)

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        before = self.describe(handle)
        _, job_id, shell, _ = self._locate(handle)
        shell.script(slurm_jobs.cancel_script(job_id, grace_sec), timeout=grace_sec + 180)
        info = self.describe(handle)
        if not before.state.is_terminal() and info.state.is_terminal() and info.exit_code not in (0, 3):
            info.state = State.CANCELLED
        shell.script(slurm_jobs.remove_script(job_id), timeout=60)
        return info
