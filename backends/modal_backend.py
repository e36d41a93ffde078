"""The Modal backend: `runner up --backend modal` calls the deployed app of this runner version (modal_app.py,
deployed when missing), so the run outlives the laptop; `runner logs/status/down` find it again from its handle.

    prepare   the stages, their call options and argv, the image, secrets and budget (modal_request.py); no SDK
    preflight the SDK and a token (or OAuth), S3 reachable from Modal, disk, the Volume, a run of the same id
              still going, and whether the app must be deployed
    launch    deploy if needed, `Function.from_name(app, "driver").spawn(run)`, the run record into storage

The run's record lives in its storage (modal_record.py); logs are Modal's own logs of the run's calls, with the
node agent's log files in storage as the fallback (modal_watch.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Iterator

from runner.modal_fs import sdk_problem

from . import local_image, modal_checks, modal_plan, modal_record, modal_request, modal_watch
from .base import Backend, BackendError, Log, PreflightError, Prepared, RunInfo, RunSpec, State


def require_modal():
    """The `modal` module, or the fix when it or a token is missing; nothing else runs before this."""
    problem = sdk_problem()
    if problem:
        raise BackendError(f"The Modal backend cannot start: {problem[0]}", problem[1])
    import modal

    return modal


@dataclasses.dataclass
class Options:
    secrets: tuple[str, ...] = ()  # --secret NAME (repeatable): Modal secrets added to the node's environment
    modal_env: str | None = None  # --modal-env / MODAL_ENVIRONMENT
    spare_retries: int = modal_plan.SPARE_RETRIES  # --modal-retries
    save_request: str | None = None  # --save-request FILE


def say(message: str) -> None:
    print(f"[runner] {message}", file=sys.stderr, flush=True)


class ModalBackend(Backend):
    name = "modal"
    multinode = True  # --nodes 2|4: the GPU stages run on a Modal cluster (modal_plan.check_cluster)

    def __init__(self):
        self.options = Options()

    def configure(self, secrets=(), modal_env=None, modal_retries=None, save_request=None) -> None:
        """The `runner up` options of this backend (backends/modal_options.py)."""
        self.options = Options(secrets=tuple(secrets or ()), modal_env=modal_env, save_request=save_request,
                               spare_retries=modal_plan.SPARE_RETRIES if modal_retries is None else int(modal_retries))

    def environment(self) -> str | None:
        return self.options.modal_env or os.environ.get("MODAL_ENVIRONMENT") or None

    # -- starting a run --------------------------------------------------------------------------------------------

    def prepare(self, spec: RunSpec) -> Prepared:
        if spec.gpu_ids or spec.scratch:
            raise BackendError("--gpu-ids and --scratch choose devices and folders of a machine you own; Modal gives each stage its own.",
                               ["Drop them for --backend modal (the plan's --gpus and --gpu-type say what each stage gets)."])
        if getattr(spec.plan, "device", "cuda") != "cuda":
            raise BackendError(f"This plan is the {spec.plan.device.upper()} rehearsal; Modal runs plans for NVIDIA GPUs.",
                               ["Run the rehearsal here: `runner up --smoke` (--backend here), or plan for GPUs: --device cuda."])
        found = modal_plan.stages(spec)
        storage_url, volume = modal_plan.node_storage(spec.storage)
        env = modal_checks.node_env(spec)
        modal_checks.check_s3_endpoint(modal_checks.s3_endpoint(spec, env))
        context = None if spec.image else str(local_image.find_context(spec.build_context))
        settings = modal_plan.image_settings(spec, context)
        run = {
            "run_id": spec.run_id, "environment": self.environment(), "budget": modal_plan.budget(found, self.options.spare_retries),
            "volumes": {f"{modal_plan.VOLUME_MOUNT}/{volume}": volume} if volume else {}, "secrets": list(self.options.secrets),
            "env_names": sorted(env),
            "stages": [{"name": s.name, "function": s.function, "phases": list(s.phases), "options": s.options,
                        "job": modal_plan.job(spec, s, volume)} for s in found],
        }
        request = modal_request.ModalRequest(app_name=modal_plan.app_name(spec, settings), environment=self.environment(),
                                             image=settings, run=run, env=env)
        handle = modal_record.make_handle(spec.run_id, spec.storage, self.environment())
        summary = (
            f"backend modal: run {spec.run_id}, storage {spec.storage} -> {storage_url} in the containers"
            + (f" (Volume {volume}, committed every 5 min and checked at the end of each stage)" if volume else ""),
            f"record: {spec.storage}/{modal_record.record_path(spec.run_id)}",
            f"handle: {handle}",
        )
        if self.options.save_request:  # asked for by name (--save-request): the one file prepare writes, no network
            with open(self.options.save_request, "w") as f:
                f.write(request.saved())
            summary += (f"request saved: {self.options.save_request} (start it with `modal run --detach backends/modal_app.py --request {self.options.save_request}`)",)
        return Prepared(spec=spec, summary=summary, request=request, render=modal_request.render)

    def preflight(self, prepared: Prepared, log: Log) -> Prepared:
        modal = require_modal()
        request, spec = prepared.request, prepared.spec
        log(f"preflight: Modal SDK {modal.__version__}, credentials configured" + (f", environment {request.environment}" if request.environment else ""))
        modal_checks.check_s3_endpoint(modal_checks.s3_endpoint(spec, dict(request.env)), resolve=True)
        from .preflight import disk_need

        need_mib = disk_need(spec.plan)["total"] / 2**20
        if need_mib > modal_plan.DISK_MIB:
            raise PreflightError(f"{spec.plan.model} needs about {need_mib / 1024:.0f} GiB of scratch; Modal stages here get {modal_plan.DISK_MIB // 1024} GiB.",
                                 ["Run a smaller model on Modal, or use --backend local/ssh with a large disk."])
        for volume in request.run["volumes"].values():
            modal.Volume.from_name(volume, environment_name=request.environment, create_if_missing=True).hydrate()
            log(f"preflight: Volume {volume} ready")
        from runner.storage import open_storage

        options = modal_record.storage_options(spec.storage, request.environment, spec.storage_options)
        store = modal_record.RecordStore(spec.storage, open_storage(spec.storage, options))  # reachable and writable from here
        existing = store.read(spec.run_id)
        if existing:
            info = modal_watch.refresh(store, existing, modal, modal_record.make_handle(spec.run_id, spec.storage, request.environment))
            if info.state in (State.RUNNING, State.PENDING):  # unknown: Modal no longer knows it, so it is long over
                raise PreflightError(f"Run {spec.run_id} is still going on Modal ({info.handle}).",
                                     [f"Follow it: `runner logs -f '{info.handle}'`, or stop it: `runner down '{info.handle}'`.", "Or give this run another --run-id."])
        try:
            modal.Function.from_name(request.app_name, "driver", environment_name=request.environment).hydrate()
            deploy = spec.rebuild  # --rebuild: build the image again and redeploy
        except modal.exception.NotFoundError:
            deploy = True
        log(f"preflight: app {request.app_name} " + ("to be deployed (once for this runner version and image)" if deploy else "deployed"))
        return dataclasses.replace(prepared, request=dataclasses.replace(request, deploy=deploy))

    def launch(self, prepared: Prepared) -> str:
        modal = require_modal()
        request, spec = prepared.request, prepared.spec
        if request.deploy is not False:
            modal_request.deploy(request, modal)
        call = modal.Function.from_name(request.app_name, "driver", environment_name=request.environment).spawn(request.driver_argument())
        stages = [{"name": s["name"], "function": s["function"], "phases": s["phases"]} for s in request.run["stages"]]
        record = modal_record.new_record(spec.run_id, request.app_name, request.environment, spec.storage, call.object_id, stages)
        try:
            modal_record.RecordStore(spec.storage, environment=request.environment).write(record)
        except Exception:
            call.cancel(terminate_containers=True)  # a run nobody can find again must not go on
            raise
        return modal_record.make_handle(spec.run_id, spec.storage, request.environment)

    # -- finding a run again ---------------------------------------------------------------------------------------

    def _locate(self, handle: str) -> tuple[modal_record.RecordStore, dict, str]:
        run_id, storage, environment = modal_record.parse_handle(handle)
        require_modal()
        environment = environment or os.environ.get("MODAL_ENVIRONMENT") or None
        store = modal_record.RecordStore(storage, environment=environment)
        record = store.read(run_id)
        if record is None:
            raise BackendError(f"No Modal run {run_id!r} in {storage}.",
                               [f"`RUNNER_STORAGE={storage} runner status --backend modal` lists the Modal runs there.", "Check the run id and the storage in the handle."])
        return store, record, modal_record.make_handle(run_id, storage, environment)

    def describe(self, handle: str) -> RunInfo:
        store, record, handle = self._locate(handle)
        return modal_watch.refresh(store, record, require_modal(), handle)

    def list_runs(self) -> list[RunInfo]:
        storage = os.environ.get("RUNNER_STORAGE")
        if not storage:
            raise BackendError("The Modal backend lists the runs recorded in one storage: RUNNER_STORAGE is not set.",
                               ["export RUNNER_STORAGE=modal://VOLUME/PREFIX (the --storage of your runs), then run this again."])
        modal = require_modal()
        store = modal_record.RecordStore(storage, environment=self.environment())
        out = []
        for run_id in store.run_ids():
            handle = modal_record.make_handle(run_id, storage, self.environment())
            try:
                out.append(modal_watch.refresh(store, store.read(run_id) or {}, modal, handle))
            except Exception as e:  # noqa: BLE001 - one unreadable record must not hide the others
                out.append(RunInfo(handle=handle, run_id=run_id, state=State.UNKNOWN, detail=f"record unreadable: {type(e).__name__}: {e}"))
        return sorted(out, key=lambda info: info.started_at)

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        store, record, handle = self._locate(handle)
        yield from modal_watch.logs(store, record, require_modal(), handle, follow=follow, tail=tail)

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        """Cancel every call of the run (drivers first, so none starts another stage), say which, record it."""
        store, record, handle = self._locate(handle)
        stopped = modal_watch.cancel_all(store, record, require_modal())
        say(f"cancelled {len(stopped)} Modal call(s): " + ", ".join(f"{c} ({what})" for c, what in stopped) if stopped else "no Modal call to cancel")
        return modal_record.info_from(record, handle)
