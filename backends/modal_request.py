"""The Modal request: exactly what `launch` deploys and calls, built without the SDK, and its dry-run text.

`ModalRequest.run` is the driver's argument as plain data (each stage's function, `with_options` settings and
both argv lists, the run's retry budget, the Volume mounts and secret names); the variables' values travel
beside it (`env`, never rendered) and join it only in `driver_argument()`. Saved as JSON (`--save-request`),
the same request starts with `modal run --detach backends/modal_app.py --request FILE`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from runner import __version__

APP_MODULE = Path(__file__).with_name("modal_app.py")
PYTHON = "3.11"  # = modal_app.PYTHON


@dataclass(frozen=True)
class ModalRequest:
    app_name: str
    environment: str | None
    image: dict  # what the app's image is built from (modal_plan.image_settings)
    run: dict  # the driver's argument, less the variables' values
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # values of run["env_names"]; never rendered
    deploy: bool | None = None  # preflight's finding: True when the app is not deployed yet (None: not checked)

    def driver_argument(self) -> dict:
        return {**self.run, "env": dict(self.env)}

    def deploy_environ(self) -> dict[str, str]:
        """The variables modal_app.py reads when it is imported to be deployed."""
        out = {"RUNNER_MODAL_APP": self.app_name}
        if "registry" in self.image:
            return {**out, "RUNNER_MODAL_IMAGE": self.image["registry"]}
        return {**out, "RUNNER_MODAL_CONTEXT": str(self.image["context"]), "RUNNER_MODAL_BUILD_ARGS": json.dumps(self.image["build_args"]),
                "RUNNER_MODAL_REBUILD": "1" if self.image.get("force_build") else "0"}

    def saved(self) -> str:
        """The request as JSON for `modal run --detach backends/modal_app.py --request FILE` (names, no values)."""
        return json.dumps({**self.run, "app_name": self.app_name}, indent=2)


def _options_text(options: dict, retries: str) -> str:
    parts = [f"{k}={v!r}" for k, v in options.items()]
    return ", ".join([*parts, f"retries=Retries(max_retries={retries}, initial_delay=0.0)", "secrets=[...]", "volumes={...}"])


def render(request: ModalRequest) -> list[str]:
    """What will be deployed and called, for a person; built from the request itself, so the two cannot drift."""
    image = request.image
    if "registry" in image:
        built = f"registry image {image['registry']}"
    else:
        args = " ".join(f"--build-arg {k}={v}" for k, v in sorted(image["build_args"].items()))
        built = f"{image['context']}/Dockerfile with {args}" + (" (rebuilt)" if image.get("force_build") else "")
    run = request.run
    where = f" in environment {request.environment}" if request.environment else ""
    deploy = {None: "deployed first if missing", True: "deployed first", False: "already deployed"}[request.deploy]
    lines = [
        f"modal app {request.app_name}{where}: {deploy} (modal_app.py, runner {__version__})",
        f"  image: {built}; + Python {PYTHON} for Modal; entrypoint cleared",
        f"call: Function.from_name({request.app_name!r}, 'driver').spawn(run)   non-preemptible CPU driver, never retried",
        f"  retry budget for the whole run: {run['budget']} (segments of long stages + spare for lost machines)",
        f"  volumes: {', '.join(f'{m} <- Volume {v}' for m, v in run['volumes'].items()) or 'none'}",
        "  secrets (names only): " + "; ".join(
            ([f"Secret.from_dict({', '.join(run['env_names'])})"] if run["env_names"] else []) + [f"Secret.from_name({n!r})" for n in run["secrets"]]
        ) if run["env_names"] or run["secrets"] else "  secrets: none",
        "  the driver spawns, in order, each awaited:",
    ]
    for stage in run["stages"]:
        job = stage["job"]
        segments = f", stopped after {job['segment_s'] / 3600:.1f} h and retried to resume" if job["segment_s"] else ""
        lines += [
            f"    {stage['name']:<9} {stage['function']}.with_options({_options_text(stage['options'], '<budget left, at most 10>')})",
            f"              phases {','.join(stage['phases'])}{segments}",
            f"              first call: runner {shlex.join(job['argv'])}",
            f"              retries:    runner {shlex.join(job['continuing_argv'])}",
        ]
    return lines


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_app_module(environ: dict[str, str] | None = None):
    """modal_app.py imported as Modal's CLI does (`modal deploy backends/modal_app.py`): a top-level module of one
    file, so Modal mounts that file alone and the containers import it without this package."""
    spec = importlib.util.spec_from_file_location("modal_app", APP_MODULE)
    module = importlib.util.module_from_spec(spec)
    with _environ(environ or {}):
        sys.modules["modal_app"] = module
        spec.loader.exec_module(module)
    return module


def deploy(request: ModalRequest, modal) -> None:
    module = load_app_module(request.deploy_environ())
    with modal.enable_output():
        module.app.deploy(name=request.app_name, environment_name=request.environment, tag=__version__)
