"""`runner up` options of the Modal backend, as click decorators (imported by the CLI; loads no Modal SDK).

    @modal_options            on the `up` command; then
    modal = {key: params.pop(key, None) for key in MODAL_KEYS}
    if backend_name == "modal": backend.configure(**modal)
    elif any(modal.values()): raise click.UsageError("... are options of --backend modal.")

--modal-env has no envvar of its own: the backend reads MODAL_ENVIRONMENT itself, so an exported variable never
trips the "options of --backend modal" check on other backends.
"""

from __future__ import annotations

import functools

import click

MODAL_KEYS = ("secrets", "modal_env", "modal_retries", "save_request")


def modal_options(func):
    @click.option("--secret", "secrets", multiple=True, metavar="NAME", help="modal backend: a Modal secret whose variables the node gets (repeatable).")
    @click.option("--modal-env", default=None, metavar="NAME", help="modal backend: the Modal environment (default: MODAL_ENVIRONMENT, else your profile's).")
    @click.option("--modal-retries", type=click.IntRange(0, 50), default=None, metavar="N", help="modal backend: retries for lost machines in the whole run, on top of the segments long phases need (default 3).")
    @click.option("--save-request", default=None, type=click.Path(dir_okay=False), metavar="FILE", help="modal backend: write the run's request as JSON (with --dry-run: only that), for `modal run --detach backends/modal_app.py --request FILE`.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper
