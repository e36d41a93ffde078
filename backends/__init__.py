"""Backends: they provide GPUs, reach the storage and start `runner node run` detached.

Each backend (local Docker, SSH host, Modal) implements the small interface in `backends.base`: dry-run,
preflight, submit → handle, describe, logs (with follow) and cancel, where the handle string alone is enough to
reattach. The node agent itself lives in `runner/` and is identical on every backend.

Backends are registered here by name and imported only when asked for, so `runner --help` loads no Docker SDK.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendError, split_handle

# name -> "module:Class" (None: planned, not available in this version)
REGISTRY: dict[str, str | None] = {
    "local": "backends.local:LocalBackend",
    "ssh": "backends.ssh:SSHBackend",
    "modal": "backends.modal_backend:ModalBackend",
}
DEFAULT = "local"

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
    """(backend, handle) for what a user typed: a handle (`local://...`) or a bare run id / name (local)."""
    scheme, rest = split_handle(run)
    backend = get_backend(scheme or DEFAULT)
    return backend, backend.handle_for(rest)
