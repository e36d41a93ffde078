"""`runner up`, `logs`, `status`, `down`: start a plan on a backend and watch it from any terminal.

`up` builds the plan, lets the backend prepare (build or find the image) and check the machine, starts the run
detached and streams its output until it ends. Ctrl-C only detaches: the run goes on, and `runner logs -f
HANDLE` picks it up again from anywhere. The backends and the Docker SDK are imported inside the commands, so
`runner --help` stays fast.

`up` shares its plan options with `runner plan`; runner/cli.py hands them in (`up_command(plan_options,
make_plan)`), so this module never imports runner.cli, which also runs as `python -m runner.cli`.
"""

from __future__ import annotations

import functools
import sys
import time

import click

GRACE_SEC = 60.0


def say(message: str) -> None:
    click.echo(f"[runner] {message}", err=True)


def node_options(func):
    """Options handed through to `runner node run` on the node."""

    @click.option("--offline", is_flag=True, help="Node downloads nothing; steps whose pre-seeded files are missing are skipped.")
    @click.option("--force", is_flag=True, help="Rerun every phase even when its marker says it is done.")
    @click.option("--from", "from_phase", default=None, metavar="PHASE", help="Rerun PHASE and every phase after it.")
    @click.option("--only", "only_phase", default=None, metavar="PHASE", help="Run only PHASE (its inputs must be in storage).")
    @click.option("--heartbeat-sec", type=float, default=None, help="Heartbeat after this many seconds of silence (node default 60).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


SSH_KEYS = ("host", "identity", "accept_new_host_key", "mode", "nanochat_src", "wheelhouse")


def ssh_options(func):
    """Options of the ssh backend (`--backend ssh`); popped out of the plan options in `up`."""

    @click.option("--host", default=None, metavar="USER@HOST[:PORT]", help="ssh backend: the GPU host to log in to.")
    @click.option("--identity", default=None, metavar="KEY", help="ssh backend: private key to log in with (default: ~/.ssh/config, the agent, ~/.ssh/id_*).")
    @click.option("--accept-new-host-key", is_flag=True, default=None, help="ssh backend: trust a host key not yet in known_hosts (it is printed and saved).")
    @click.option("--mode", type=click.Choice(["auto", "docker", "bare"]), default=None, help="ssh backend: run in the image on the host's Docker, or install bare (default: auto).")
    @click.option("--nanochat-src", default=None, type=click.Path(file_okay=False, exists=True), help="ssh backend, bare: upload this nanochat checkout instead of cloning it on the host.")
    @click.option("--wheelhouse", default=None, type=click.Path(file_okay=False, exists=True), help="ssh backend, bare: install offline from this folder of wheels (and a uv binary), uploaded.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def _pairs(values: tuple[str, ...], what: str, from_env: bool = False) -> dict[str, str]:
    import os

    from .errors import RunnerError

    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not key or (not sep and not from_env):
            raise RunnerError(f"{what} {value!r} is not KEY=VALUE.", [f"Write it as {what} KEY=VALUE."])
        if not sep:
            if key not in os.environ:
                raise RunnerError(f"{what} {key}: {key} is not set in this shell.", [f"Export {key} first, or write {what} {key}=VALUE."])
            rest = os.environ[key]
        out[key] = rest
    return out


def _node_args(offline, force, from_phase, only_phase, heartbeat_sec) -> list[str]:
    args = ["--offline"] if offline else []
    args += ["--force"] if force else []
    args += ["--from", from_phase] if from_phase else []
    args += ["--only", only_phase] if only_phase else []
    args += ["--heartbeat-sec", str(heartbeat_sec)] if heartbeat_sec is not None else []
    return args


def up_command(plan_options, make_plan):
    """The `up` command, built with the plan options and plan builder of runner/cli.py."""

    @click.command(short_help="Start a run on a backend (local Docker) and stream its output; Ctrl-C detaches.")
    @click.option("--backend", "backend_name", default="local", show_default=True, help="Where to run: local (Docker here), ssh (a GPU host over SSH) or modal.")
    @click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None, help="Plan JSON from `runner plan --json` instead of the plan options.")
    @plan_options
    @click.option("--smoke", is_flag=True, help="Same as --model smoke: minutes on one GPU through every phase.")
    @click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="A folder on this machine (bind-mounted) or s3://bucket/prefix.")
    @click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", help="fsspec option for the node, e.g. endpoint_url=... (repeatable).")
    @click.option("--run-id", default=None, help="Name of the run (default: the plan's). Reusing one continues it.")
    @node_options
    @ssh_options
    @click.option("--image", default=None, help="Image to run (default: nanochat-runner:nanochat-<commit>, built when missing).")
    @click.option("--rebuild", is_flag=True, help="Build the image even when it exists.")
    @click.option("--context", "build_context", default=None, type=click.Path(file_okay=False), help="Build context with the Dockerfile (default: this checkout).")
    @click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Docker build argument, e.g. BASE_IMAGE=... (repeatable).")
    @click.option("--gpu-ids", default=None, metavar="all|ID,ID", help="Which GPUs: all, or device ids (default: the plan's count).")
    @click.option("--scratch", default=None, type=click.Path(file_okay=False), help="Host folder for the node's scratch (default: the container's disk).")
    @click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Extra variable for the node; KEY alone takes this shell's value.")
    @click.option("--dry-run", is_flag=True, help="Show what would be built and started; do nothing.")
    @click.option("-d", "--detach", is_flag=True, help="Return once the run has started instead of streaming it.")
    def up(backend_name, plan_file, smoke, storage, storage_options, run_id, offline, force, from_phase, only_phase,
           heartbeat_sec, image, rebuild, build_context, build_args, gpu_ids, scratch, env, dry_run, detach, **plan_params):
        """Run the speedrun on a backend: prepare the image, preflight the machine, start `runner node run` detached,
        and stream its output until it ends. Ctrl-C detaches; the run goes on."""
        from backends import get_backend
        from backends.base import RunSpec

        from .errors import PlanError
        from .plan import Plan

        if smoke:
            if plan_params.get("model") not in (None, "smoke") or plan_params.get("depth") is not None:
                raise PlanError("--smoke is the smoke model; it cannot be combined with --model or --depth.", ["Drop --smoke or the other option."])
            plan_params["model"] = "smoke"
        ssh = {key: plan_params.pop(key, None) for key in SSH_KEYS}
        backend = get_backend(backend_name)
        if backend_name == "ssh":
            backend.configure(**ssh)
        elif any(ssh.values()):
            raise click.UsageError("--host, --identity, --accept-new-host-key, --mode, --nanochat-src and --wheelhouse are options of --backend ssh.")
        # The plan options are runner/cli.py's (shared with `runner plan`), passed through by name.
        the_plan = Plan.load(plan_file) if plan_file else make_plan(**plan_params)
        if run_id:
            the_plan.run_id = run_id
        spec = RunSpec(
            plan=the_plan, storage=storage, storage_options=list(storage_options),
            node_args=_node_args(offline, force, from_phase, only_phase, heartbeat_sec), env=_pairs(env, "--env", from_env=True),
            image=image, build_args=_pairs(build_args, "--build-arg"), build_context=build_context, rebuild=rebuild,
            gpu_ids=gpu_ids, scratch=scratch,
        )
        if dry_run:
            click.echo(backend.dry_run(spec))
            return
        backend.preflight(spec, say)
        handle = backend.submit(spec)
        say(f"started run {the_plan.run_id}: {handle}")
        say(f"reattach from any terminal: runner logs -f {handle}   status: runner status {handle}   stop: runner down {handle}")
        if detach:
            click.echo(handle)
            return
        sys.exit(_follow(backend, handle))

    return up


def _follow(backend, handle: str, tail: int | None = None) -> int:
    """Stream the run's output until it ends, with a live status line every minute; returns the node agent's
    exit code. Ctrl-C detaches."""
    reporter = _progress_reporter(lambda: backend.describe(handle))
    try:
        for line in backend.logs(handle, follow=True, tail=tail):
            click.echo(line, nl=False)
        info = backend.describe(handle)
        # The log stream can end a moment before the engine records the exit.
        for _ in range(50):
            if info.state.is_terminal():
                break
            time.sleep(0.2)
            info = backend.describe(handle)
    except KeyboardInterrupt:
        reporter.set()
        click.echo("", err=True)
        say(f"detached; the run goes on. Reattach: runner logs -f {handle}   stop it: runner down {handle}")
        return 0
    reporter.set()
    say(f"run {info.run_id}: {info.state.value} (exit {info.exit_code}); it is kept (logs, status) until `runner down {handle}`")
    return info.exit_code if info.exit_code is not None else 1


@click.command(short_help="Print a run's output; -f follows it until the run ends.")
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the run ends, then exit with its exit code.")
@click.option("--tail", type=int, default=None, help="Only the last N lines (before following).")
def logs(run, follow, tail):
    """Print the output of RUN (a handle like local://nanochat-<run id>, or the run id)."""
    from backends import backend_for

    backend, handle = backend_for(run)
    if follow:
        backend.describe(handle)  # a clear error for an unknown run, before streaming
        sys.exit(_follow(backend, handle, tail))
    for line in backend.logs(handle, follow=False, tail=tail):
        click.echo(line, nl=False)


@click.command(short_help="Show runs and their state (and, with RUN, its phases from storage).")
@click.argument("run", required=False)
@click.option("--backend", "backend_name", default="local", show_default=True, help="Backend whose runs to list (without RUN).")
@click.option("--json", "as_json", is_flag=True, help="With RUN: print the backend's view and the live status as JSON.")
def status(run, backend_name, as_json):
    """Without RUN: every run the backend knows. With RUN: its state, progress, cost so far and phases from storage."""
    from backends import backend_for, get_backend

    if not run:
        runs = get_backend(backend_name).list_runs()
        if not runs:
            click.echo(f"No runs on the {backend_name} backend.")
            return
        click.echo(f"{'RUN':<44} {'STATE':<10} {'EXIT':<5} {'STARTED':<20} HANDLE")
        for info in runs:
            exit_code = "" if info.exit_code is None else str(info.exit_code)
            click.echo(f"{info.run_id:<44} {info.state.value:<10} {exit_code:<5} {info.started_at:<20} {info.handle}")
        return
    backend, handle = backend_for(run)
    info = backend.describe(handle)
    if as_json:
        import dataclasses
        import json

        live = _live(info)
        backend_view = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(vars(info))
        click.echo(json.dumps({"backend": backend_view, "status": live[0] if live else None}, indent=2, default=str))
        return
    click.echo(f"run:      {info.run_id}\nhandle:   {info.handle}\nstate:    {info.state.value}"
               + (f" (exit {info.exit_code})" if info.exit_code is not None else "")
               + f"\nstarted:  {info.started_at}" + (f"\nfinished: {info.finished_at}" if info.finished_at else "")
               + f"\nstorage:  {info.storage}\nbackend:  {info.detail}")
    _storage_status(info)


def _live(info):
    """(live summary, status) from the run's storage, or None when this machine cannot read it yet."""
    from .live import summarize
    from .runlogs import load_run
    from .storage import open_storage

    try:
        storage = open_storage(info.storage, check=False)
        status, plan = load_run(storage, info.run_id)
        return summarize(storage, status, plan), status
    except Exception:  # noqa: BLE001 - a missing or unreadable status file only means less detail
        return None


def _storage_status(info) -> None:
    """Progress, cost so far, newest checkpoint and the phase table, from the node agent's status file."""
    from .live import format_line

    live = _live(info)
    if live is None:
        click.echo("phases:   (no status file readable in storage yet)")
        return
    summary, data = live
    click.echo(f"live:     {format_line(summary)}")
    for name, phase in data.get("phases", {}).items():
        note = phase.get("note", "")
        click.echo(f"  {name:<10} {phase.get('state', ''):<24} {note}")


def _progress_reporter(info_source, every_sec: float = 60.0):
    """A thread printing the live status line (from storage) every minute while `runner up` follows a run."""
    import threading

    from .live import format_line

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_sec):
            try:
                live = _live(info_source())
            except Exception:  # noqa: BLE001 - the line is a convenience; the log stream is the real output
                live = None
            if live:
                click.echo(f"[status] {format_line(live[0])}", err=True)

    thread = threading.Thread(target=loop, name="live-status", daemon=True)
    thread.start()
    return stop


@click.command(short_help="Stop a run and remove its container (storage keeps everything it made).")
@click.argument("run")
@click.option("--grace", type=float, default=GRACE_SEC, show_default=True, help="Seconds the node agent gets to stop its phase.")
def down(run, grace):
    """Stop RUN (SIGTERM, then SIGKILL after --grace seconds) and remove it. Rerunning with the same --run-id and
    storage continues where it stopped."""
    from backends import backend_for

    backend, handle = backend_for(run)
    info = backend.cancel(handle, grace)
    exit_code = "" if info.exit_code is None else f" (exit {info.exit_code})"
    click.echo(f"run {info.run_id}: {info.state.value}{exit_code}; removed {handle}")
