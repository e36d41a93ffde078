"""The `here` backend: the node agent on this very machine, no Docker, detached. It is what `runner up` does
when no backend is named.

    runner up --smoke                      # the CPU rehearsal on a laptop, or the GPU smoke run on a GPU box

The run is `runner node run` from this same installation, started with `setsid nohup` in a run folder under
`~/.cache/nanochat-runner/runs/<run id>/` (its pid, output.log and exit_code), with this shell's environment (so
credentials never appear on a command line or in a file). The same bash as the SSH backend's bare mode starts,
finds, follows and stops it (detached.py), run by a local shell instead of over SSH. `here://<run id>` is the
handle; `runner logs -f`, `status` and `down` take it, or the bare run id. nanochat is the one in
`--nanochat-dir`/`$NANOCHAT_DIR`, or else the node agent provisions it at the plan's commit (provision.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.context import RUN_ID_RE, check_run_id
from runner.devices import nvidia_gpus

from . import detached, preflight
from .base import Backend, BackendError, Log, PreflightError, Prepared, RunInfo, RunSpec, State, split_handle
from .launch import GpuRequest, NodeCommand

def runs() -> detached.RunFolder:
    """~/.cache/nanochat-runner/runs (or under $XDG_CACHE_HOME), as a real path: it also lands in the run's argv."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return detached.RunFolder(str(cache.resolve() / "nanochat-runner" / "runs"))


class LocalShell:
    """What the SSH connection does for the SSH backend, on this machine: bash fed through stdin, output streamed."""

    def script(self, text: str, timeout: float = 3600) -> tuple[int, str]:
        proc = subprocess.run(["bash", "-s"], input=text, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    def stream(self, command: str) -> Iterator[str]:
        proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            yield from proc.stdout
        finally:  # Ctrl-C while following: the tail goes, the run stays
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class HereLaunch:
    node: NodeCommand
    runner: tuple[str, ...]  # this installation's runner: the same code the laptop runs
    gpus: GpuRequest
    run_dir: str


def storage_folder(storage: str) -> Path | None:
    """A plain path or file:// is a folder here, made absolute (the run does not start in this directory)."""
    if storage.startswith("file://"):
        return Path(storage.removeprefix("file://")).expanduser().resolve()
    if "://" not in storage:
        return Path(storage).expanduser().resolve()
    return None


class HereBackend(Backend):
    name = "here"

    def __init__(self):
        self.shell = LocalShell()

    def prepare(self, spec: RunSpec) -> Prepared:
        if spec.storage.startswith("memory://"):
            raise BackendError("memory:// storage lives inside one process; a detached run cannot share it.", ["Use a folder (the default, ./storage) or s3://BUCKET/PREFIX."])
        folder = storage_folder(spec.storage)
        run_dir = runs().run_dir(spec.run_id)
        node = spec.node_command(storage=str(folder) if folder else spec.storage, plan_file=f"{run_dir}/plan.json",
                                 scratch=str(Path(spec.scratch).expanduser().resolve()) if spec.scratch else None)
        request = HereLaunch(node, (sys.executable, "-m", "runner.cli"), GpuRequest.parse(spec.gpu_ids, spec.plan.gpus), run_dir)
        device = getattr(spec.plan, "device", "cuda")
        summary = (
            f"backend here: this machine, the node agent directly (no container), on {'its CPU' if device == 'cpu' else device.upper() if device == 'mps' else f'{spec.plan.gpus} NVIDIA GPU(s)'}",
            "nanochat: $NANOCHAT_DIR, or provisioned once at " + spec.plan.commit[:7] + " under ~/.cache/nanochat-runner/nanochat/",
            "preflight: GPUs (nvidia-smi), free disk for storage and scratch, no run of the same id still running",
        )
        return Prepared(spec, summary, request, self._render)

    def _render(self, request: HereLaunch) -> list[str]:
        return [
            f"then: `{shlex.join([*request.runner, *request.node.argv()])}` detached, in {request.run_dir}/",
            f"handle: {self.handle_for(request.node.run_id)}",
        ]

    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        spec, request = prepared.spec, prepared.request
        check_run_id(spec.run_id)
        if getattr(spec.plan, "device", "cuda") == "cuda":
            gpus = nvidia_gpus()
            if len(gpus) < spec.plan.gpus:
                raise PreflightError(
                    f"This plan runs on {spec.plan.gpus} NVIDIA GPU(s), but this machine has {len(gpus) or 'no'}{' (' + ', '.join(gpus) + ')' if gpus else ''}.",
                    ["Rehearse the whole pipeline on this machine's CPU: `runner up --smoke`.",
                     f"Or plan for the GPUs here (--gpus {len(gpus)})." if gpus else "Or run it where the GPUs are: --backend local|ssh|modal."],
                )
            log(f"preflight: {len(gpus)} NVIDIA GPU(s): {', '.join(sorted(set(gpus)))}")
        places = []
        folder = storage_folder(spec.storage)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PreflightError(f"Cannot make the storage folder {folder} ({e}).", ["Point --storage at a folder you can write to."]) from None
            places.append(preflight.DiskPlace("storage", folder, "point --storage at a bigger disk, or use s3://BUCKET/PREFIX"))
        scratch = Path(request.node.scratch or os.environ.get("RUNNER_SCRATCH") or _default_scratch())
        places.append(preflight.DiskPlace("scratch", scratch, "point --scratch at a bigger local disk"))
        for note in preflight.check_disk(spec.plan, places):
            log(f"preflight: {note}")
        info = detached.describe(self.shell, runs(), spec.run_id, self.handle_for(spec.run_id), "this machine")
        if info is not None and info.state == State.RUNNING:
            raise PreflightError(f"Run {spec.run_id} is already running here ({info.handle}).",
                                 [f"Follow it: `runner logs -f {info.handle}`, or stop it: `runner down {info.handle}`.", "Or give this run another --run-id."])
        return prepared

    def launch(self, prepared: Prepared) -> str:
        spec, request = prepared.spec, prepared.request
        files = {
            "meta.json": detached.meta_json(run_id=spec.run_id, storage=request.node.storage, mode="here",
                                            started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())),
            "plan.json": json.dumps(spec.plan.to_dict(), indent=1),
            "run.sh": runs().run_sh(spec.run_id, "bare", [*request.runner, *request.node.argv()]),
        }
        env = {**spec.node_env(), **request.gpus.visible_devices()}
        # The launch script inherits this process's environment; only --env values and device ids are added.
        code, out = self.shell.script(runs().launch_script(spec.run_id, files, env), timeout=120)
        if code or "pid=" not in out:
            raise BackendError(f"Starting the run failed (exit {code}): {out.strip()[-500:]}", ["Check the free disk in ~/.cache, then run this again."])
        return self.handle_for(spec.run_id)

    # -- finding it again ----------------------------------------------------------------------------------------

    def _run_id(self, handle: str) -> str:
        scheme, ident = split_handle(handle)
        if scheme and scheme != self.name:
            raise BackendError(f"{handle} is not a run on this machine.", [f"Use the {scheme} backend's commands for it."])
        if not RUN_ID_RE.match(ident):
            raise BackendError(f"{ident!r} is not a run id.", ["Use the handle `runner up` printed (here://RUN_ID)."])
        return ident

    def describe(self, handle: str) -> RunInfo:
        run_id = self._run_id(handle)
        info = detached.describe(self.shell, runs(), run_id, self.handle_for(run_id), "this machine")
        return detached.require(info, run_id, "this machine", "`runner status` lists the runs here.")

    def list_runs(self) -> list[RunInfo]:
        ids = detached.list_ids(self.shell, runs())
        return [info for run_id in ids if (info := detached.describe(self.shell, runs(), run_id, self.handle_for(run_id), "this machine"))]

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        info = self.describe(handle)
        yield from detached.logs(self.shell, runs(), info.run_id, follow, tail)

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        return detached.cancel(self.shell, runs(), self.describe(handle), grace_sec)

    def knows(self, run_id: str) -> bool:
        """Whether a run folder of this id exists here (how a bare run id finds its backend)."""
        return RUN_ID_RE.match(run_id) is not None and detached.describe(self.shell, runs(), run_id, "", "") is not None


def _default_scratch() -> Path:
    from runner.context import default_scratch

    return default_scratch()
