"""The Modal backend: `runner up --backend modal` deploys one app per run, built from this repository's
Dockerfile, and starts its driver detached (`spawn`), so the run outlives the laptop.

The app: the image from the same Dockerfile with the same build arguments (or `--image` from a registry), a CPU
stage for data and tokenizer, one GPU function per later phase (GPU type pinned, count from the plan, timeout
from the estimate; see modal_plan.py), `modal.Retries` on every stage for preemption (the node agent resumes
from the newest complete checkpoint), storage on a Volume mounted at /vol or on S3, and secrets from the
variables forwarded here, a `.env` file, and the Modal secrets named in RUNNER_MODAL_SECRETS. A small Modal
Dict keeps run id → driver call, so `runner logs/status/down modal://RUN` work from any terminal; logs come from
the node agent's log files in storage. This module only adapts; what it hands the SDK is computed in
modal_plan.py and tested there.
"""

from __future__ import annotations

import os
import tempfile
import time
import types
from pathlib import Path
from typing import Iterator

from runner.modal_fs import sdk_problem

from . import local_image, modal_plan, modal_remote
from .base import Backend, BackendError, Log, PreflightError, RunInfo, RunSpec, State, split_handle, state_from_exit

APP_PREFIX = "nanochat-"
MODAL_PYTHON = "3.11"  # Modal's own interpreter in the image; the runner keeps its venv and nanochat's Python
LOG_POLL_SEC = 15.0


def require_modal():
    """The `modal` module, or the fix when it or a token is missing; nothing else runs before this."""
    problem = sdk_problem()
    if problem:
        raise BackendError(f"The Modal backend cannot start: {problem[0]}", problem[1])
    import modal

    return modal


def secret_names() -> list[str]:
    return [n.strip() for n in os.environ.get("RUNNER_MODAL_SECRETS", "").split(",") if n.strip()]


def function_specs(spec: RunSpec) -> list[dict]:
    """Each Modal function of the run as plain data: what `app.function(...)` gets, with the SDK objects named."""
    storage_url, volume = modal_plan.node_storage(spec.storage)
    stages = modal_plan.stages(spec.plan, spec.node_args)
    volumes = {f"{modal_plan.VOLUME_MOUNT}/{volume}": volume} if volume else {}
    secrets = {"env": sorted(spec.node_env()), "dotenv": Path(".env").is_file(), "named": secret_names()}
    out = [{**modal_plan.function_kwargs(s), "volumes": volumes, "secrets": secrets, "image": "runner",
            "payload": modal_plan.payload(spec, s, storage_url, volume)} for s in stages]
    out.append({"name": "driver", "timeout": modal_plan.DRIVER_TIMEOUT_SEC, "retries": dict(modal_plan.RETRIES),
                **modal_plan.DRIVER, "volumes": {}, "secrets": {"env": [], "dotenv": False, "named": []}, "image": "driver"})
    return out


def image_spec(spec: RunSpec) -> dict:
    if spec.image:
        return {"registry": spec.image, "add_python": MODAL_PYTHON}
    context = local_image.find_context(spec.build_context)
    return {"dockerfile": str(context / "Dockerfile"), "context_dir": str(context), "build_args": modal_plan.image_build_args(spec),
            "add_python": MODAL_PYTHON, "force_build": spec.rebuild}


def build_app(spec: RunSpec, modal=None):
    """The Modal App for this run, defined offline (nothing is sent until it is deployed)."""
    modal = modal or require_modal()
    info = image_spec(spec)
    if "registry" in info:
        image = modal.Image.from_registry(info["registry"], add_python=info["add_python"])
    else:
        # Modal reads COPY sources itself and refuses ${VAR:-default} there: hand it the same Dockerfile rendered.
        rendered = Path(tempfile.mkdtemp(prefix="runner-modal-")) / "Dockerfile"
        rendered.write_text(modal_plan.render_dockerfile(Path(info["dockerfile"]).read_text(), info["build_args"]))
        image = modal.Image.from_dockerfile(rendered, context_dir=info["context_dir"], build_args=info["build_args"],
                                            add_python=info["add_python"], force_build=info["force_build"])
    image = image.entrypoint([])  # the image's ENTRYPOINT is `runner`; Modal starts its own process
    secrets = [modal.Secret.from_dict(spec.node_env())] if spec.node_env() else []
    secrets += [modal.Secret.from_dotenv()] if Path(".env").is_file() else []
    secrets += [modal.Secret.from_name(n) for n in secret_names()]
    app = modal.App(app_name(spec.run_id))
    # The functions are pickled whole (by value): Modal's Python in the container cannot import this package.
    from modal._vendor import cloudpickle

    cloudpickle.register_pickle_by_value(modal_remote)
    for fn in function_specs(spec):
        kwargs = {k: v for k, v in fn.items() if k not in ("volumes", "secrets", "image", "payload", "retries")}
        kwargs["retries"] = modal.Retries(**fn["retries"])
        if fn["image"] == "driver":
            target, kwargs["image"] = modal_remote.driver_entry, modal.Image.debian_slim(python_version=MODAL_PYTHON)
        else:
            target, kwargs["image"], kwargs["secrets"] = modal_remote.stage_entry, image, secrets
            kwargs["volumes"] = {mount: modal.Volume.from_name(name, create_if_missing=True) for mount, name in fn["volumes"].items()}
        # A copy per stage: each registration is its own function; serialized, since its settings come from the plan.
        copy = types.FunctionType(target.__code__, target.__globals__, fn["name"].replace("-", "_"), target.__defaults__)
        app.function(serialized=True, **kwargs)(copy)
    return app


def app_name(run_id: str) -> str:
    return (APP_PREFIX + run_id)[:64]


def driver_input(spec: RunSpec) -> dict:
    return {"run_id": spec.run_id, "app_name": app_name(spec.run_id), "driver_timeout_s": modal_plan.DRIVER_TIMEOUT_SEC,
            "stages": [fn["payload"] for fn in function_specs(spec) if "payload" in fn]}


class ModalBackend(Backend):
    name = "modal"

    def dry_run(self, spec: RunSpec) -> str:
        info = image_spec(spec)
        stages = modal_plan.stages(spec.plan, spec.node_args)
        storage_url, volume = modal_plan.node_storage(spec.storage)
        image = (f"registry image {info['registry']}" if "registry" in info else
                 f"{info['dockerfile']} with " + " ".join(f"--build-arg {k}={v}" for k, v in sorted(info["build_args"].items())))
        secrets = [f"variables {', '.join(sorted(spec.node_env()))}"] if spec.node_env() else []
        secrets += [".env"] if Path(".env").is_file() else []
        secrets += [f"Modal secret {n}" for n in secret_names()]
        return "\n".join([
            f"backend modal: app {app_name(spec.run_id)} (deployed), driver started with spawn (detached)",
            f"image: {image} (+ Python {MODAL_PYTHON} for Modal, entrypoint cleared)",
            f"storage: {spec.storage} -> {storage_url} in the containers" + (f" (Volume {volume} mounted, committed every {modal_plan.COMMIT_EVERY_SEC}s and after each stage)" if volume else ""),
            f"secrets (names only): {'; '.join(secrets) or 'none'}",
            f"retries on preemption: {modal_plan.RETRIES['max_retries']} per stage; the node agent resumes from the newest complete checkpoint",
            "stages (runner node run on the plan cut after each stage's last phase):",
            *modal_plan.describe_stages(stages),
            f"handle: {self.handle_for(spec.run_id)}",
        ])

    def preflight(self, spec: RunSpec, log: Log) -> None:
        modal = require_modal()
        log(f"preflight: Modal SDK {modal.__version__}, token configured")
        stages = modal_plan.stages(spec.plan, spec.node_args)
        log(f"preflight: {len(stages)} stage(s), GPU {modal_plan.gpu_string(spec.plan)}, longest timeout {max(s.timeout_s for s in stages) / 3600:.1f} h")
        _, volume = modal_plan.node_storage(spec.storage)
        if volume:
            modal.Volume.from_name(volume, create_if_missing=True).hydrate()
            log(f"preflight: Volume {volume} ready")
        else:
            from runner.storage import open_storage

            open_storage(spec.storage, spec.storage_options)  # S3: reachable and writable with the credentials passed on
        existing = self._record(spec.run_id, must_exist=False)
        if existing and not self.describe(self.handle_for(spec.run_id)).state.is_terminal():
            handle = self.handle_for(spec.run_id)
            raise PreflightError(f"Run {spec.run_id} is already running ({handle}).", [f"Follow it: `runner logs -f {handle}`, or stop it: `runner down {handle}`.", "Or give this run another --run-id."])

    def submit(self, spec: RunSpec) -> str:
        modal = require_modal()
        app = build_app(spec, modal)
        with modal.enable_output():
            app.deploy(name=app_name(spec.run_id))
        call = modal.Function.from_name(app_name(spec.run_id), "driver").spawn(driver_input(spec))
        self._runs()[spec.run_id] = {"call_id": call.object_id, "storage": spec.storage, "app_name": app_name(spec.run_id),
                                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
        return self.handle_for(spec.run_id)

    # -- finding a run again ---------------------------------------------------------------------------------------

    def _runs(self):
        return require_modal().Dict.from_name(modal_plan.RUNS_DICT, create_if_missing=True)

    def _record(self, run_id: str, must_exist: bool = True) -> dict | None:
        entry = self._runs().get(run_id)
        if entry is None and must_exist:
            raise BackendError(f"No Modal run {run_id!r}.", ["`runner status --backend modal` lists the runs Modal knows.", "Check the run id (the handle is modal://RUN_ID)."])
        return entry

    def _run_id(self, handle: str) -> str:
        scheme, ident = split_handle(handle)
        if scheme and scheme != self.name:
            raise BackendError(f"{handle} is not a Modal run.", [f"Use the {scheme} backend's commands for it."])
        return ident

    def _info(self, run_id: str, entry: dict) -> RunInfo:
        modal = require_modal()
        state, code, detail = State.RUNNING, None, f"app {entry.get('app_name')}, driver call {entry.get('call_id')}"
        try:
            result = modal.FunctionCall.from_id(entry["call_id"]).get(timeout=0)
            code = int(result.get("exit_code", 1))
            state = state_from_exit(code, cancelled=bool(entry.get("cancelled")))
        except TimeoutError:
            pass  # still running
        except Exception as e:  # noqa: BLE001 - the call failed or was cancelled: its words go into the detail
            state = State.CANCELLED if entry.get("cancelled") else State.FAILED
            detail += f" ({type(e).__name__}: {e})"
        return RunInfo(handle=self.handle_for(run_id), run_id=run_id, state=state, exit_code=code, started_at=entry.get("started_at", ""),
                       storage=entry.get("storage", ""), detail=detail + (f", stage {entry['stage']}" if entry.get("stage") else ""))

    def describe(self, handle: str) -> RunInfo:
        run_id = self._run_id(handle)
        return self._info(run_id, self._record(run_id))

    def list_runs(self) -> list[RunInfo]:
        return sorted((self._info(k, v) for k, v in self._runs().items()), key=lambda info: info.started_at)

    def logs(self, handle: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """The node agent's phase logs from storage (mirrored every 15 s, committed with the Volume)."""
        from runner.storage import open_storage

        run_id = self._run_id(handle)
        storage = open_storage(self._record(run_id)["storage"], check=False)
        seen: dict[str, int] = {}
        first = True
        while True:
            lines = []
            for name in sorted(storage.find(f"_runner/runs/{run_id}/logs"), key=_phase_order):
                text = storage.read_text(f"_runner/runs/{run_id}/logs/{name}")
                lines += text[seen.get(name, 0):].splitlines(keepends=True)
                seen[name] = len(text)
            yield from (lines[-tail:] if first and tail is not None else lines)
            first = False
            if not follow or self.describe(handle).state.is_terminal():
                return
            time.sleep(LOG_POLL_SEC)

    def cancel(self, handle: str, grace_sec: float = 60.0) -> RunInfo:
        modal = require_modal()
        run_id = self._run_id(handle)
        entry = self._record(run_id)
        modal.FunctionCall.from_id(entry["call_id"]).cancel(terminate_containers=True)
        self._runs()[run_id] = {**entry, "cancelled": True}
        return self._info(run_id, {**entry, "cancelled": True})


def _phase_order(name: str) -> int:
    order = ["data", "tokenizer", "base", "mid", "sft", "rl", "report"]
    stem = name.removesuffix(".log")
    return order.index(stem) if stem in order else len(order)
