"""The `runner` command line.

Every command imports what it needs inside its own function, so `runner --help` loads only click. User mistakes
raise `RunnerError` subclasses, which click prints as a message with the fix, never as a traceback.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from . import __version__


def plan_options(func):
    """Options that choose a plan: shared by `plan` and `node run`."""

    @click.option("--recipe", default="seed", show_default=True, help="nanochat pin: seed (a1ccb3d) or latest (92d63d4).")
    @click.option("--model", default=None, help="d12, d20, d26, d32 or smoke (default: the recipe's, d20 for seed).")
    @click.option("--depth", type=int, default=None, help="Any other depth instead of --model.")
    @click.option("--gpus", type=int, default=None, help="GPUs per node: 1, 2, 4 or 8 (default 8; smoke: 1).")
    @click.option("--gpu-type", default="H100", show_default=True, help="H100, H200, A100-80GB or B200 (prices.toml).")
    @click.option("--with-rl", is_flag=True, help="Add the optional RL phase (GSM8K).")
    @click.option("--wandb-run", default=None, help="wandb run name (default: the run id when WANDB_API_KEY is set, else dummy).")
    @click.option("--checkpoint-every-min", type=float, default=30.0, show_default=True, help="Minutes of base training between checkpoints (derived --save_every).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def make_plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min=30.0):
    """Build a plan; the wandb run is named after the run id when a wandb key is present, else disabled."""
    from .plan import build_plan

    def build(run_name, run_id=None):
        return build_plan(recipe, model, depth, gpus, gpu_type, with_rl, run_name, run_id=run_id, checkpoint_every_min=checkpoint_every_min)

    the_plan = build(wandb_run or "dummy")
    if wandb_run is None and os.environ.get("WANDB_API_KEY"):
        the_plan = build(the_plan.run_id, the_plan.run_id)
    return the_plan


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "RUNNER"})
@click.version_option(__version__, prog_name="runner")
def main():
    """Run Karpathy's nanochat speedrun on any GPUs: plan it, run it on a node, keep every artifact in storage."""


@main.command(short_help="Show the phases, commands, hours and dollars of a run; spends nothing.")
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (the input of `runner node run --plan`).")
def plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min, as_json):
    """Build the plan for a recipe × model × GPU count and show what it will run and cost."""
    the_plan = make_plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min)
    if as_json:
        click.echo(the_plan.to_json())
        return
    from .plan_view import print_plan

    print_plan(the_plan)


@main.group(short_help="Commands that run on the GPU node itself.")
def node():
    """Commands that run on the GPU node (inside the image, or on a bare host)."""


@node.command("run", short_help="Run a plan's phases against a storage URL (the node agent).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None, help="Plan JSON from `runner plan --json`; without it, a plan is built from the plan options.")
@click.option("--plan-json", envvar="RUNNER_PLAN_JSON", default=None, help="The plan itself as JSON text (how backends hand it to a container).")
@plan_options
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="Where everything lives: a path, file://, s3://bucket/prefix or memory://.")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://127.0.0.1:8333 (repeatable).")
@click.option("--nanochat-dir", envvar="NANOCHAT_DIR", default=None, help="The nanochat checkout (default: $NANOCHAT_DIR, set by the image).")
@click.option("--python", "python_exe", default=None, help="Interpreter with nanochat's dependencies (default: the checkout's .venv).")
@click.option("--scratch", envvar="RUNNER_SCRATCH", default=None, help="Fast local disk for NANOCHAT_BASE_DIR and caches (default: /scratch if writable, else a temp dir).")
@click.option("--run-id", default=None, help="Name of this run in storage (default: the plan's).")
@click.option("--offline", is_flag=True, help="Download nothing: skip the steps whose pre-seeded files are missing, and say which.")
@click.option("--force", is_flag=True, help="Run every selected phase even when its marker says it is done.")
@click.option("--from", "from_phase", default=None, metavar="PHASE", help="Run PHASE and every phase after it, even if done.")
@click.option("--only", "only_phase", default=None, metavar="PHASE", help="Run only PHASE (its inputs must be in storage).")
@click.option("--heartbeat-sec", type=float, default=60.0, show_default=True, help="Print a heartbeat after this many seconds of silence.")
def node_run(plan_file, plan_json, recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min, storage, storage_options,
             nanochat_dir, python_exe, scratch, run_id, offline, force, from_phase, only_phase, heartbeat_sec):
    """Execute a plan on this machine: stage inputs from storage, run each phase, push outputs back."""
    from .node import NodeOptions, run_node
    from .plan import Plan

    if plan_file:
        the_plan = Plan.load(plan_file)
    elif plan_json:
        the_plan = Plan.parse(plan_json, "RUNNER_PLAN_JSON")
    else:
        the_plan = make_plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min)
    options = NodeOptions(
        storage=storage,
        storage_options=list(storage_options),
        nanochat_dir=nanochat_dir,
        python=python_exe,
        scratch=scratch,
        run_id=run_id or the_plan.run_id,
        offline=offline,
        force=force,
        from_phase=from_phase,
        only_phase=only_phase,
        heartbeat_sec=heartbeat_sec,
    )
    sys.exit(run_node(the_plan, options))


@main.command(short_help="Write a run's report (metrics, costs, plots) into its storage.")
@click.argument("run_id", metavar="RUN")
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="The run's storage URL.")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help="fsspec option (repeatable).")
@click.option("--html", "as_html", is_flag=True, help="Also render it as one standalone HTML page.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the report here on this machine.")
def report(run_id, storage, storage_options, as_html, output):
    """Read RUN back from storage and write _runner/runs/RUN/report/report.md (and .html) with its plots."""
    from .report import write
    from .storage import open_storage, reading

    with reading(storage):
        store = open_storage(storage, storage_options, check=False)
        url, data = write(store, run_id, as_html=as_html)
    if output:
        rel = url.removeprefix(store.url.rstrip("/") + "/")
        with open(output, "w") as f:
            f.write(store.read_text(rel))
    click.echo(f"report: {url} ({len(data['metrics'])} steps with metrics, plots: {', '.join(data['plots']) or 'none'})")


@main.command("ls", short_help="List the runs in a storage URL with state, phase, model and cost.")
@click.argument("storage")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help="fsspec option (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(storage, storage_options, as_json):
    """The runs under STORAGE, newest first."""
    import json as json_module

    from .live import summarize
    from .runlogs import list_runs, load_run
    from .storage import open_storage, reading

    rows = []
    with reading(storage):
        store = open_storage(storage, storage_options, check=False)
        for run_id in list_runs(store):
            status, plan = load_run(store, run_id)
            summary = summarize(store, status, plan)
            last = next((n for n, info in reversed(list(status["phases"].items())) if info["state"] not in ("pending",)), None)
            rows.append({**summary, "last_phase": last, "started_at": status.get("started_at")})
    rows.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    if as_json:
        click.echo(json_module.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No runs in {store.url}.")
        return
    click.echo(f"{'run':<40} {'state':<30} {'last phase':<11} {'model':<7} {'cost':>10}")
    for r in rows:
        cost = ", ".join(f"{b} ${d:,.2f}" for b, d in r["dollars"].items()) if len(r["dollars"]) == 1 else f"${min(r['dollars'].values()):,.2f}+"
        click.echo(f"{r['run_id']:<40} {r['state']:<30} {r['last_phase'] or '-':<11} {r['model'] or '-':<7} {cost:>10}")


@main.command(short_help="Chat with a run's trained model (terminal, or the web UI with --web).")
@click.argument("run_id", metavar="RUN")
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="The run's storage URL.")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help="fsspec option (repeatable).")
@click.option("-p", "--prompt", default=None, help="Ask one question and print the answer (default: interactive).")
@click.option("--web", is_flag=True, help="Serve nanochat's chat web UI on 127.0.0.1 instead.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the web UI.")
@click.option("--source", type=click.Choice(["rl", "sft", "mid"]), default=None, help="Which model (default: the most trained).")
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

    from .chat import chat as run_chat
    from .node import default_scratch

    if backend_name == "local":
        from backends.local_chat import chat_in_container

        from .cli_backends import _pairs
        from .plan import Plan
        from .runlogs import load_run
        from .storage import open_storage

        _, plan_raw = load_run(open_storage(storage, storage_options, check=False), run_id)
        chat_args = [*(["-p", prompt] if prompt else []), *(["--web", "--port", str(port)] if web else []), *(["--source", source] if source else [])]
        extra_env = _pairs(env, "--env", from_env=True)
        sys.exit(chat_in_container(Plan.from_dict(plan_raw), storage, list(storage_options), chat_args, image, extra_env, log=click.echo))

    where = Path(scratch).expanduser() if scratch else default_scratch()
    sys.exit(run_chat(run_id, storage, storage_options, nanochat_dir, python_exe, where, prompt, web, port, source, log=click.echo))


@main.command(short_help="Copy a run's storage between two URLs, incrementally; deletes only with --delete.")
@click.argument("src")
@click.argument("dst")
@click.option("--delete", is_flag=True, help="Also delete files in DST that SRC does not have.")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied and deleted.")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Files copied at once.")
@click.option("--src-option", "src_options", multiple=True, metavar="KEY=VALUE", help="fsspec option for SRC (repeatable).")
@click.option("--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE", help="fsspec option for DST (repeatable).")
def sync(src, dst, delete, dry_run, workers, src_options, dst_options):
    """Copy every file of SRC that DST lacks or holds differently (size, then checksum / ETag)."""
    from .storage import open_storage, reading
    from .sync import sync as run_sync

    with reading(src):
        source = open_storage(src, src_options, check=False)
        empty = not source.find("")
    if empty:
        from .errors import StorageError

        raise StorageError(f"{src} holds no files (or cannot be listed).", ["Check the source URL and its credentials."])
    target = open_storage(dst, dst_options, check=not dry_run)
    result = run_sync(source, target, delete=delete, dry_run=dry_run, workers=workers, log=click.echo)
    verb = "would copy" if dry_run else "copied"
    click.echo(f"{verb} {len(result.copied)} file(s) ({result.bytes / 1e6:,.1f} MB in {result.seconds:.1f}s), "
               f"{result.identical} identical, {'would delete' if dry_run else 'deleted'} {len(result.deleted)}")
    if dry_run:
        for rel in result.copied:
            click.echo(f"  copy   {rel}")
        for rel in result.deleted:
            click.echo(f"  delete {rel}")


from . import cli_backends  # noqa: E402 - the backend commands, which import their heavy parts lazily

main.add_command(cli_backends.up_command(plan_options, make_plan), "up")
main.add_command(cli_backends.logs)
main.add_command(cli_backends.status)
main.add_command(cli_backends.down)


if __name__ == "__main__":  # pragma: no cover
    main()
