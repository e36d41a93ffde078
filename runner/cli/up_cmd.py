"""`runner up`: start a plan on a backend and stream it until it ends; Ctrl-C only detaches.

`up` builds the plan, asks the backend to prepare the launch (the same object `--dry-run` prints), lets it check
the machine and build or find what the launch needs, starts the run detached and follows it (watch.py). `runner
logs -f HANDLE` picks it up again from anywhere. The backends and their SDKs are imported inside the command, so
`runner --help` stays fast.
"""

from __future__ import annotations

import sys

import click

from backends.modal_options import MODAL_KEYS, modal_options
from backends.slurm_options import SLURM_KEYS, slurm_options

from .options import make_plan, node_options, pairs, plan_options, storage_option
from .watch import follow_run, say

SSH_KEYS = ("host", "identity", "accept_new_host_key", "mode", "nanochat_src", "wheelhouse", "master_port")
BACKEND_OPTIONS = {"ssh": SSH_KEYS, "modal": MODAL_KEYS, "slurm": SLURM_KEYS}  # options of some backends only; the chosen one gets them in configure()

ssh_options = [
    click.option("--host", multiple=True, metavar="USER@HOST[:PORT]",
                 help="ssh backend: the GPU host to log in to; repeat it for several nodes (--nodes N), the first one the leader. "
                      "slurm backend: the login node to submit on."),
    click.option("--master-port", type=click.IntRange(1, 65535), default=None,
                 help="ssh backend, several hosts: torchrun's rendezvous port on the first host (default 29500)."),
    click.option("--identity", default=None, metavar="KEY", help="ssh and slurm backends: private key to log in with (default: ~/.ssh/config, the agent, ~/.ssh/id_*)."),
    click.option("--accept-new-host-key", is_flag=True, default=None, help="ssh and slurm backends: trust a host key not yet in known_hosts (it is printed and saved)."),
    click.option("--mode", type=click.Choice(["auto", "docker", "bare"]), default=None, help="ssh backend: run in the image on the host's Docker, or install bare (default: auto)."),
    click.option("--nanochat-src", default=None, type=click.Path(file_okay=False, exists=True), help="ssh and slurm backends, bare: upload this nanochat checkout instead of cloning it on the host."),
    click.option("--wheelhouse", default=None, type=click.Path(file_okay=False, exists=True), help="ssh and slurm backends, bare: install offline from this folder of wheels (and a uv binary), uploaded."),
]


def _is_multinode(name: str) -> bool:
    from backends import get_backend

    try:
        return get_backend(name).multinode
    except Exception:  # noqa: BLE001 - a backend whose SDK is missing here simply is not offered
        return False


def _with(options):
    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


@click.command(short_help="Start a run (on this machine, or a backend) and stream its output; Ctrl-C detaches.")
@click.option("--backend", "backend_name", default="here", show_default=True,
              help="Where to run: here (this machine, no Docker), local (Docker here), ssh (a GPU host over SSH), modal or slurm.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None, help="Plan JSON from `runner plan --json` instead of the plan options.")
@plan_options
@click.option("--storage", default="./storage", show_default=True, envvar="RUNNER_STORAGE", help="A folder on this machine, or s3://bucket/prefix.")
@storage_option
@click.option("--run-id", default=None, help="Name of the run (default: a new one); also the W&B run name when WANDB_API_KEY is set. Reusing one continues it.")
@node_options
@_with(ssh_options)
@modal_options
@slurm_options
@click.option("--image", default=None, help="Image to run (default: nanochat-runner:nanochat-<commit>, built when missing).")
@click.option("--rebuild", is_flag=True, help="Build the image even when it exists.")
@click.option("--context", "build_context", default=None, type=click.Path(file_okay=False), help="Build context with the Dockerfile (default: this checkout).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Docker build argument, e.g. BASE_IMAGE=... (repeatable).")
@click.option("--gpu-ids", default=None, metavar="all|ID,ID", help="Which GPUs: all, or device ids (default: the plan's count).")
@click.option("--scratch", default=None, type=click.Path(file_okay=False), help="Host folder for the node's scratch (default: the container's disk).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Extra variable for the node; KEY alone takes this shell's value.")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be built and started; do nothing.")
@click.option("-d", "--detach", is_flag=True, help="Return once the run has started instead of streaming it.")
def up(backend_name, plan_file, storage, storage_options, run_id, offline, force, from_phase, only_phase, fresh,
       heartbeat_sec, image, rebuild, build_context, build_args, gpu_ids, scratch, env, dry_run, detach, **params):
    """Run the speedrun on a backend: prepare the launch, preflight the machine, start `runner node run` detached,
    and stream its output until it ends. Ctrl-C detaches; the run goes on."""
    from backends import REGISTRY, get_backend
    from backends.base import RunSpec

    from ..plan import Plan

    backend = get_backend(backend_name)
    names = dict.fromkeys(key for keys in BACKEND_OPTIONS.values() for key in keys)  # a key may serve several backends
    values = {key: params.pop(key, None) for key in names}
    own = BACKEND_OPTIONS.get(backend_name, ())
    if own:
        backend.configure(**{key: values[key] for key in own})
    for name, keys in BACKEND_OPTIONS.items():
        given = {key: values[key] for key in keys if key not in own}
        if name != backend_name and any(value for value in given.values()):
            ctx = click.get_current_context()
            flags = ", ".join(param.opts[0] for param in ctx.command.params if param.name in given and given[param.name])
            raise click.UsageError(f"{flags}: option(s) of --backend {name}, not of --backend {backend_name}.")
    if plan_file:
        the_plan = Plan.load(plan_file)
        if run_id:
            the_plan.run_id = run_id
    else:
        the_plan = make_plan(**params, run_id=run_id, on_this_machine=backend_name == "here")
    if the_plan.nodes > 1 and not backend.multinode:
        multi = ", ".join(name for name in REGISTRY if name != backend_name and _is_multinode(name))
        raise click.UsageError(f"--backend {backend_name} runs one node; this plan has {the_plan.nodes} (--nodes)."
                               + (f" Several nodes run on: {multi}." if multi else ""))
    spec = RunSpec(
        plan=the_plan, storage=storage, storage_options=list(storage_options),
        offline=offline, force=force, fresh=fresh, from_phase=from_phase, only_phase=only_phase, heartbeat_sec=heartbeat_sec,
        env=pairs(env, "--env", from_env=True), image=image, build_args=pairs(build_args, "--build-arg"),
        build_context=build_context, rebuild=rebuild, gpu_ids=gpu_ids, scratch=scratch,
    )
    prepared = backend.prepare(spec)
    if dry_run:
        click.echo(str(prepared))
        return
    prepared = backend.preflight(prepared, say)
    handle = backend.launch(prepared)
    say(f"started run {the_plan.run_id}: {handle}")
    say(f"reattach from any terminal: runner logs -f {handle}   status: runner status {handle}   stop: runner down {handle}")
    if detach:
        click.echo(handle)
        return
    sys.exit(follow_run(backend, handle))
