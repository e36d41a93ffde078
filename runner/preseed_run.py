"""Before the first phase: every file the selected steps use (`uses` in the recipe: eval bundle, datasets, word
lists) is in storage, whole, with its manifest; what is missing is fetched once and stored, so no phase downloads
lazily hours into a run. With --offline nothing is fetched: a step whose recipe says `offline = "fail"` stops the
run now, the others run without the file or are skipped, and the log says which.
"""

from __future__ import annotations

from . import preseed
from .context import say
from .errors import PreseedError
from .transfer import push


def ensure_preseeded(ctx, steps, ledger) -> None:
    """Fetch and store what `steps` use and storage lacks; record in `ledger` what --offline leaves missing."""
    needed = sorted({name for step in steps for name in step.uses})
    failed: dict[str, str] = {}
    for name in needed:
        item = ctx.items[name]
        problem = preseed.stored_problem(ctx.storage, item)  # present only with its manifest, every file whole
        if problem is None:
            continue
        if ctx.options.offline:
            ledger.missing_items[name] = problem
            continue
        if not problem.startswith("not in storage"):
            say(f"pre-seed {name}: {problem}; fetching it again")
        ctx.status.set(state="preseeding", step=f"preseed:{name}")
        try:
            local = preseed.fetch(item, ctx.scratch, ctx.nanochat, ctx.base_dir, ctx.cache_dir, log=say)
            preseed.store(ctx.storage, item, local, lambda path, rel: push(ctx.storage, path, rel, ctx.state, log=say), log=say)
        except Exception as e:  # noqa: BLE001 - reported together below, before any training
            failed[name] = f"{type(e).__name__}: {e}"
    if failed:
        ctx.status.set(state="failed", error="pre-seed failed: " + ", ".join(failed))
        raise preseed.missing_error(failed, ctx.items, ctx.storage.url)
    # A step whose recipe says offline = "fail" cannot run without its files: stop now, not hours in.
    blocked = sorted({f"{s.name} needs {n}" for s in steps if s.offline == "fail" for n in ledger.missing_for(s)})
    if blocked:
        raise PreseedError(f"--offline, and steps cannot run without pre-seeded files: {'; '.join(blocked)}.",
                           [f"Put them into storage ({', '.join(sorted(ledger.missing_items))}): run once without --offline, or `runner sync` them in."])
    for name, reason in ledger.missing_items.items():
        say(f"--offline: {name} is {reason}; steps that need it will be skipped or run without it")
