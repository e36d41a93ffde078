"""Watching a run from any terminal by its handle: `runner logs`, `runner status`, `runner down`, and the following
loop `runner up` shares (stream the output, a live status line every minute, Ctrl-C detaches)."""

from __future__ import annotations

import sys
import time

import click

GRACE_SEC = 60.0


def say(message: str) -> None:
    click.echo(f"[runner] {message}", err=True)


def follow_run(backend, handle: str, tail: int | None = None) -> int:
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
        sys.exit(follow_run(backend, handle, tail))
    for line in backend.logs(handle, follow=False, tail=tail):
        click.echo(line, nl=False)


@click.command(short_help="Show runs and their state (and, with RUN, its phases from storage).")
@click.argument("run", required=False)
@click.option("--backend", "backend_name", default=None,
              help="Backend whose runs to list (without RUN). Default: this machine's runs and the local Docker engine's.")
@click.option("--json", "as_json", is_flag=True, help="With RUN: print the backend's view and the live status as JSON.")
def status(run, backend_name, as_json):
    """Without RUN: every run the backend knows. With RUN: its state, progress, cost so far and phases from storage."""
    from backends import backend_for, get_backend

    if not run:
        runs = _list_runs(backend_name)
        if not runs:
            click.echo(f"No runs on the {backend_name or 'here or local'} backend.")
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
    from ..live import summarize
    from ..runlogs import load_run
    from ..storage import open_storage

    try:
        storage = open_storage(info.storage, check=False)
        status, plan = load_run(storage, info.run_id)
        return summarize(storage, status, plan), status
    except Exception:  # noqa: BLE001 - a missing or unreadable status file only means less detail
        return None


def _storage_status(info) -> None:
    """Progress, cost so far, newest checkpoint and the phase table, from the node agent's status file."""
    from ..live import format_line

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

    from ..live import format_line

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


def _list_runs(backend_name: str | None) -> list:
    """The runs of one backend, or (no name) of this machine: `here` runs and, when a Docker engine answers, the
    local backend's containers, so `runner status` shows what `runner up` started here either way."""
    from backends import BackendError, get_backend

    if backend_name:
        return get_backend(backend_name).list_runs()
    runs = list(get_backend("here").list_runs())
    try:
        runs += get_backend("local").list_runs()
    except (BackendError, OSError, ImportError):
        pass  # no Docker engine here: only this machine's runs
    except Exception as error:  # the Docker SDK's own errors (engine down, no permission) are not ours to type
        if type(error).__module__.split(".")[0] != "docker":
            raise
    return runs


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
