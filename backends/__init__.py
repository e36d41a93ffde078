"""Backends: they provide GPUs, reach the storage and start `runner node run` detached.

Each backend (local Docker, SSH host, Modal) implements the same small interface: dry-run, submit → handle,
status, logs (with follow) and cancel, where the handle string alone is enough to reattach. The node agent
itself lives in `runner/` and is identical on every backend.
"""
