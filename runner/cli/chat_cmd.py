"""`runner chat`: nanochat's chat CLI or web UI against a run's most trained model, staged from storage."""

from __future__ import annotations

import sys

import click

from .options import storage_option


@click.command(short_help="Chat with a run's trained model (terminal, or the web UI with --web).")
@click.argument("run_id", metavar="RUN")
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="The run's storage URL.")
@storage_option
@click.option("-p", "--prompt", default=None, help="Ask one question and print the answer (default: interactive).")
@click.option("--web", is_flag=True, help="Serve nanochat's chat web UI on 127.0.0.1 instead.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the web UI.")
@click.option("--source", default=None, help="Which model: a chat phase of the recipe, e.g. sft, rl or mid (default: the most trained).")
@click.option("--nanochat-dir", envvar="NANOCHAT_DIR", default=None, help="The nanochat checkout (default: $NANOCHAT_DIR).")
@click.option("--python", "python_exe", default=None, help="Interpreter with nanochat's dependencies.")
@click.option("--scratch", envvar="RUNNER_SCRATCH", default=None, help="Local disk for the staged checkpoint.")
@click.option("--backend", "backend_name", type=click.Choice(["here", "local"]), default="here", show_default=True,
              help="here: this machine (a GPU node with nanochat); local: a container of the run's image on the local Docker engine.")
@click.option("--image", default=None, help="With --backend local: the image (default: the run's, built when missing).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="With --backend local: extra variable for the container.")
def chat(run_id, storage, storage_options, prompt, web, port, source, nanochat_dir, python_exe, scratch, backend_name, image, env):
    """Run nanochat's chat CLI (or web UI) against RUN's final checkpoint staged from storage."""
    from pathlib import Path

    from ..chat import chat as run_chat
    from ..context import default_scratch

    if backend_name == "local":
        from backends.local_chat import chat_in_container

        from .options import pairs
        from ..plan import Plan
        from ..runlogs import load_run
        from ..storage import open_storage

        _, plan_raw = load_run(open_storage(storage, storage_options, check=False), run_id)
        chat_args = [*(["-p", prompt] if prompt else []), *(["--web", "--port", str(port)] if web else []), *(["--source", source] if source else [])]
        extra_env = pairs(env, "--env", from_env=True)
        sys.exit(chat_in_container(Plan.from_dict(plan_raw), storage, list(storage_options), chat_args, image, extra_env, log=click.echo))

    where = Path(scratch).expanduser() if scratch else default_scratch()
    sys.exit(run_chat(run_id, storage, storage_options, nanochat_dir, python_exe, where, prompt, web, port, source, log=click.echo))
