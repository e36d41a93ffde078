"""Commands that read or copy a storage from any machine: `runner report`, `runner ls`, `runner sync`."""

from __future__ import annotations

import contextlib
import signal

import click

from .options import storage_option

EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler, `kill`) stops a copy the way Ctrl-C does: at once, cleaning up."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(short_help="Write a run's report (metrics, costs, plots) into its storage.")
@click.argument("run_id", metavar="RUN")
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="The run's storage URL.")
@storage_option
@click.option("--html", "as_html", is_flag=True, help="Also render it as one standalone HTML page.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the report here on this machine.")
def report(run_id, storage, storage_options, as_html, output):
    """Read RUN back from storage and write _runner/runs/RUN/report/report.md (and .html) with its plots."""
    from ..report import write
    from ..storage import open_storage, reading

    with reading(storage):
        store = open_storage(storage, storage_options, check=False)
        url, data = write(store, run_id, as_html=as_html)
    if output:
        rel = url.removeprefix(store.url.rstrip("/") + "/")
        with open(output, "w") as f:
            f.write(store.read_text(rel))
    click.echo(f"report: {url} ({len(data['metrics'])} steps with metrics, plots: {', '.join(data['plots']) or 'none'})")


@click.command("ls", short_help="List the runs in a storage URL with state, phase, model and cost.")
@click.argument("storage")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(storage, storage_options, as_json):
    """The runs under STORAGE, newest first."""
    import json as json_module

    from ..live import summarize_all
    from ..storage import open_storage, reading

    with reading(storage):
        store = open_storage(storage, storage_options, check=False)
        rows = summarize_all(store)
    if as_json:
        click.echo(json_module.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No runs in {store.url}.")
        return
    click.echo(f"{'run':<40} {'state':<30} {'last phase':<11} {'model':<7} {'cost':>10}")
    for r in rows:
        dollars = r["dollars"]
        cost = ", ".join(f"{b} ${d:,.2f}" for b, d in dollars.items()) if len(dollars) == 1 else f"${min(dollars.values()):,.2f}+" if dollars else "-"
        click.echo(f"{r['run_id']:<40} {r['state']:<30} {r['last_phase'] or '-':<11} {r['model'] or '-':<7} {cost:>10}")
    for r in rows:
        if r.get("problem"):
            click.echo(f"note: {r['problem']}")


@click.command(short_help="Copy a run's storage between two URLs, incrementally; deletes only with --delete.")
@click.argument("src")
@click.argument("dst")
@click.option("--delete", is_flag=True, help="Also delete files in DST that SRC does not have.")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied and deleted.")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Files copied at once.")
@click.option("--src-option", "src_options", multiple=True, metavar="KEY=VALUE", help="fsspec option for SRC (repeatable).")
@click.option("--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE", help="fsspec option for DST (repeatable).")
def sync(src, dst, delete, dry_run, workers, src_options, dst_options):
    """Copy every file of SRC that DST lacks or holds differently (size, then checksum / ETag)."""
    from ..storage import open_storage, reading
    from ..sync import sync as run_sync

    with reading(src):
        source = open_storage(src, src_options, check=False)
        empty = not source.find("")
    if empty:
        from ..errors import StorageError

        raise StorageError(f"{src} holds no files (or cannot be listed).", ["Check the source URL and its credentials."])
    target = open_storage(dst, dst_options, check=not dry_run)
    try:
        with sigterm_as_interrupt():
            result = run_sync(source, target, delete=delete, dry_run=dry_run, workers=workers, log=click.echo)
    except KeyboardInterrupt:
        click.echo("sync interrupted: copies stopped, partial files removed; run the same sync again to continue "
                   "(what arrived is skipped)", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    verb = "would copy" if dry_run else "copied"
    click.echo(f"{verb} {len(result.copied)} file(s) ({result.bytes / 1e6:,.1f} MB in {result.seconds:.1f}s), "
               f"{result.identical} identical, {'would delete' if dry_run else 'deleted'} {len(result.deleted)}")
    if dry_run:
        for rel in result.copied:
            click.echo(f"  copy   {rel}")
        for rel in result.deleted:
            click.echo(f"  delete {rel}")
