"""Backends: they provide GPUs, reach the storage and start `runner node run` detached.

Each backend (this machine, local Docker, SSH host, Modal, Slurm) implements the small interface in `backends.base`: dry-run,
preflight, submit → handle, describe, logs (with follow) and cancel, where the handle string alone is enough to
reattach. The node agent itself lives in `runner/` and is identical on every backend.

Backends are registered here by name and imported only when asked for, so `runner --help` loads no Docker SDK.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendError, split_handle

# name -> "module:Class" (None: planned, not available in this version)
REGISTRY: dict[str, str | None] = {
    "here": "backends.here:HereBackend",
    "local": "backends.local:LocalBackend",
    "ssh": "backends.ssh:SSHBackend",
    "modal": "backends.modal_backend:ModalBackend",
    "slurm": "backends.slurm:SlurmBackend",
}
DEFAULT = "here"

_PLANNED_FIXES: dict[str, list[str]] = {}


def get_backend(name: str) -> Backend:
    """The backend called `name`, imported on first use."""
    if name not in REGISTRY:
        raise BackendError(f"Unknown backend {name!r}.", [f"Use one of: {', '.join(REGISTRY)}."])
    target = REGISTRY[name]
    if target is None:
        available = ", ".join(n for n, t in REGISTRY.items() if t)
        raise BackendError(f"The {name} backend is not available yet in this version (available: {available}).", _PLANNED_FIXES[name])
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


def backend_for(run: str) -> tuple[Backend, str]:
    """(backend, handle) for what a user typed: a handle (`here://...`, `local://...`) or a bare run id: a run of
    this machine when one of that id is here, else a container of the local Docker engine."""
    scheme, rest = split_handle(run)
    if not scheme:
        here = get_backend("here")
        scheme = "here" if here.knows(rest) else "local"
    backend = get_backend(scheme)
    return backend, backend.handle_for(rest)
