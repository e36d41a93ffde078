"""The node agent (`runner node run`): the only code that touches nanochat, identical on every backend.

For each phase of the plan it stages what the phase needs from storage into local scratch (used as
NANOCHAT_BASE_DIR), runs the phase's steps from the nanochat checkout (steps.py), publishes its checkpoints
(publish.py) and pushes what else it made back to storage, and writes a marker so a rerun skips it. Before any
phase it pre-seeds the files nanochat would otherwise download lazily. Evaluation steps may fail without stopping
the run; the exit code says so. What one run reads and what it learns are the objects in context.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import time
from dataclasses import dataclass, field

from . import markers, shards
from .checkpoints import is_checkpoint_dir
from .context import RunContext, RunLedger, StepResult, check_run_id, check_scratch_space, disk_full_error, say
from .errors import PhaseFailed, PlanError, RunnerError
from .lease import hold_model_lease
from .multinode import check_nodes_match, crew_for
from .nanochat_env import locate
from .preseed_run import ensure_preseeded
from .process import LogSink, ran_out_of_space
from .provision import nanochat_dir
from .publish import CheckpointPublisher
from .recipes import load_recipe
from .rendezvous import Rendezvous
from .resume import stage_newest_complete
from .steps import StepRunner
from .storage import open_storage
from .storage_errors import StorageNotAnswering
from .transfer import pull, push

EXIT_OK = 0
EXIT_EVAL_FAILED = 3
EXIT_INTERRUPTED = 130
REPORT_DIR = "report"


@dataclass
class NodeOptions:
    storage: str
    storage_options: list[str] = field(default_factory=list)
    nanochat_dir: str | None = None
    python: str | None = None
    scratch: str | None = None
    run_id: str = ""
    offline: bool = False
    force: bool = False  # every selected phase again, training from scratch
    fresh: bool = False  # with --from/--only: resumable phases start over instead of resuming
    from_phase: str | None = None
    only_phase: str | None = None
    heartbeat_sec: float = 60.0
    log_upload_sec: float = 15.0
    steal: bool = False  # take over the model's lease once it has expired
    steal_now: bool = False  # take it over even while its holder's heartbeat is fresh
    lease_wait_sec: float = 0.0  # wait this long for a lease of this same run id to expire (a retry after preemption)
    rendezvous: Rendezvous = field(default_factory=Rendezvous)  # this node among the run's nodes (one node: the default)
    leader_wait_sec: float = 1800.0  # how long a follower waits for the leader's "phase inputs ready"


def run_node(plan, options: NodeOptions) -> int:
    """Entry point of `runner node run`; returns the process exit code. Everything that can be refused is refused
    before the first write to storage or scratch."""
    check_run_id(options.run_id)
    _check_phase_names(plan, options)
    check_nodes_match(plan, options.rendezvous)
    plan.check()  # every command against the pin's flag table, wherever the plan came from
    storage = open_storage(options.storage, options.storage_options)
    nanochat = locate(nanochat_dir(options.nanochat_dir, plan, log=say), options.python, plan.commit, plan.recipe)
    ctx = RunContext.build(plan, options, storage, nanochat)
    check_scratch_space(ctx.scratch, plan)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not options.rendezvous.is_leader:
            from .follower import Follower

            return Follower(ctx).run()  # joins the leader's steps; writes no marker, status or manifest
        return NodeAgent(ctx).run()  # one node, or node rank 0 of several: the leader
    except OSError as e:  # a disk that filled up anywhere (storage, scratch, the lease): the fix, not a traceback
        full = disk_full_error("running the node agent", e)
        if full is None:
            raise
        raise full from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _check_phase_names(plan, options: NodeOptions) -> None:
    if options.from_phase and options.only_phase:
        raise PlanError("--from and --only cannot be combined.", ["Use --from PHASE to run from a phase on, or --only PHASE for one phase."])
    if options.fresh and not (options.from_phase or options.only_phase):
        raise PlanError("--fresh applies to the phases --from or --only select.", ["Add --from PHASE or --only PHASE (or use --force to redo every phase from scratch)."])
    recipe_phases = [p["name"] for p in load_recipe(plan.recipe)["phase"]]
    for name in (options.from_phase, options.only_phase):
        if name and name not in plan.phase_names():
            if name in recipe_phases:
                raise PlanError(f"Phase {name!r} is not in this plan.", ["Add --with-rl to include the RL phase."])
            raise PlanError(f"Unknown phase {name!r}.", [f"Use one of: {', '.join(plan.phase_names())}."])


class NodeAgent:
    """The agent of one node, or the leader (node rank 0) of several: only it selects phases, pre-seeds, and writes
    markers, status and manifests; `run` is where that leader-only work happens."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.ledger = RunLedger()
        self.crew = crew_for(ctx, say)  # None on one node
        self.steps = StepRunner(ctx, self.ledger, self.crew)
        self.keys = markers.phase_keys(ctx.plan)

    # -- selection ---------------------------------------------------------------------------------------------

    def select(self) -> list[tuple]:
        """[(phase, steps to run, previous marker or None)] for the phases this invocation runs. --force reruns
        every phase from scratch; --from/--only rerun the chosen ones, resuming a resumable one unless --fresh."""
        ctx, options, names = self.ctx, self.ctx.options, self.ctx.plan.phase_names()
        if options.only_phase:
            chosen, forced = {options.only_phase}, True
        elif options.from_phase:
            chosen, forced = set(names[names.index(options.from_phase):]), True
        else:
            chosen, forced = set(names), options.force
        if options.force or options.fresh:
            self.ledger.fresh = set(chosen)
        selected = []
        for phase in ctx.plan.phases:
            if phase.name not in chosen:
                continue
            marker = None if forced else markers.read_marker(ctx.storage, phase.name, self.keys[phase.name])
            if marker is None:
                selected.append((phase, list(phase.steps), None))
                continue
            redo = {*marker.get("steps_failed", [])}
            if not options.offline:
                redo |= set(marker.get("steps_skipped", []))
            steps = [s for s in phase.steps if s.name in redo]
            if steps:
                say(f"phase {phase.name}: done by run {marker['run_id']}, rerunning {', '.join(s.name for s in steps)}")
                selected.append((phase, steps, marker))
            else:
                say(f"phase {phase.name}: done (marker {marker['key']} from run {marker['run_id']}), skipping")
                ctx.status.phase(phase.name, state="done", marker=marker["key"], note=f"skipped: done by run {marker['run_id']}")
        return selected

    # -- pre-seeding -------------------------------------------------------------------------------------------

    def preseed(self, selected) -> None:
        ensure_preseeded(self.ctx, [step for _, steps, _ in selected for step in steps], self.ledger)

    # -- phases ------------------------------------------------------------------------------------------------

    def _pull(self, rel: str, local) -> None:
        ctx = self.ctx
        if is_checkpoint_dir(rel):
            # Only the newest complete checkpoint: what nanochat loads, never a torn one.
            stage_newest_complete(ctx.storage, rel, local, ctx.state, log=say)
            return
        # Only the plan's shards: a bucket may hold more from a bigger run, and nanochat takes the last shard
        # in sort order as its validation split, so extra shards would also change the validation data.
        only = set(shards.expected_names(ctx.plan.data)) if rel == ctx.plan.data["dir"] else None
        pull(ctx.storage, rel, local, ctx.state, log=say, only=only)

    def _check_shards(self, phase) -> None:
        """A phase that trains on the shards gets every one of them, or stops and names what is missing (with real
        nanochat the last shard present would silently become the validation split)."""
        problems = shards.problems(self.ctx.base_dir / self.ctx.plan.data["dir"], self.ctx.plan.data)
        if problems and self.ctx.options.offline:
            say(f"--offline: phase {phase.name} runs on the shards storage has; {'; '.join(problems)}")
        elif problems:
            data_phase = next((p.name for p in self.ctx.plan.phases if self.ctx.plan.data["dir"] in p.makes), "data")
            raise PhaseFailed(f"Phase {phase.name} needs the plan's {self.ctx.plan.data['shards']} shards, but in storage {'; '.join(problems)}.",
                              [f"Fetch them again: `runner node run ... --only {data_phase}` (or put them into {self.ctx.storage.url_of(self.ctx.plan.data['dir'])})."])

    def stage_in(self, phase, steps, marker) -> bool:
        """Pull the phase's inputs; False when an input was not made because an earlier phase was skipped."""
        ctx = self.ctx
        for need in phase.needs:
            if ctx.storage.find(need):
                self._pull(need, ctx.base_dir / need)
                if need == ctx.plan.data["dir"]:
                    self._check_shards(phase)
            elif need in self.ledger.unavailable:
                self._skip_phase(phase, f"needs {need}, {self.ledger.unavailable[need]}")
                return False
            else:
                maker = next((p.name for p in ctx.plan.phases if need in p.makes), None)
                fix = f"Run phase {maker} first: `runner node run ... --from {maker}`." if maker else f"Put {need} into storage."
                raise PhaseFailed(f"Phase {phase.name} needs {ctx.storage.url_of(need)}, which is not in storage.", [fix])
        for rel in [*phase.prestage, *(phase.makes if marker else []), REPORT_DIR]:
            self._pull(rel, ctx.base_dir / rel)
        for name in sorted({n for s in steps for n in s.uses} - set(self.ledger.missing_items)):
            item = ctx.items[name]
            self._pull(item.path, item.local(ctx.base_dir, ctx.cache_dir))
        return True

    def stage_out(self, phase, publishers) -> None:
        for publisher in publishers:
            publisher.publish()  # the phase has ended: what is left, then the manifests
        published = {p.rel for p in publishers}
        for rel in [*phase.makes, REPORT_DIR]:
            if rel not in published:
                push(self.ctx.storage, self.ctx.base_dir / rel, rel, self.ctx.state, log=say)

    def _skip_phase(self, phase, reason: str) -> None:
        say(f"phase {phase.name}: skipped ({reason})")
        self.ledger.skipped.append(f"{phase.name}: {reason}")
        self.ctx.status.phase(phase.name, state="skipped", note=reason)
        for made in phase.makes:
            self.ledger.unavailable[made] = f"which phase {phase.name} did not make ({reason})"

    def run_phase(self, phase, steps, marker) -> None:
        ctx = self.ctx
        ctx.status.set(state="running", phase=phase.name, step=None)
        ctx.status.phase(phase.name, state="staging", started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        started = time.monotonic()
        if not self.stage_in(phase, steps, marker):
            return
        results: dict[StepResult, list[str]] = {StepResult.OK: list(marker.get("steps_ok", [])) if marker else [], StepResult.FAILED: [], StepResult.SKIPPED: []}
        publishers = CheckpointPublisher.for_phase(ctx, phase, say, self.crew.share() if self.crew else None)
        sink = LogSink(ctx.log_dir / f"{phase.name}.log", ctx.storage, ctx.phase_log(phase.name), ctx.options.log_upload_sec, log=say)
        try:
            for index, step in enumerate(steps):
                if self.crew and index and step.all_gpus:
                    # Every node runs this step, and the others load from storage what the earlier steps made here.
                    for publisher in publishers:
                        publisher.publish()
                result = self.steps.run(phase, step, sink, publishers)
                results[result].append(step.name)
                if result == StepResult.SKIPPED and step.critical:
                    self._skip_phase(phase, f"step {step.name} was skipped: {', '.join(self.ledger.missing_for(step))} missing")
                    return
                if result == StepResult.FAILED and step.critical:
                    sink.close()
                    self._fail(phase, step)
        finally:
            if not sink.stop.is_set():
                sink.close()
        self.stage_out(phase, publishers)
        ok, failed, skipped = results[StepResult.OK], results[StepResult.FAILED], results[StepResult.SKIPPED]
        markers.write_marker(ctx.storage, phase, self.keys[phase.name], ctx.run_id, ok, failed, skipped)
        ctx.status.phase(phase.name, state="done" if not failed else "done_with_eval_failures", seconds=round(time.monotonic() - started, 1))
        say(f"phase {phase.name}: done in {(time.monotonic() - started) / 60:.1f} min")

    def _fail(self, phase, step) -> None:
        ctx = self.ctx
        push(ctx.storage, ctx.base_dir / REPORT_DIR, REPORT_DIR, ctx.state, log=say)
        remote_log = ctx.storage.url_of(ctx.phase_log(phase.name))
        local_log = ctx.log_dir / f"{phase.name}.log"
        ctx.status.phase(phase.name, state="failed", failed_step=step.name)
        if ran_out_of_space(local_log, ctx.scratch):
            ctx.status.set(state="failed", error=f"{phase.name}/{step.name} failed: no space left on device")
            raise disk_full_error(f"{phase.name}/{step.name} ran (log: {local_log})", OSError(errno.ENOSPC, "No space left on device", str(ctx.scratch)))
        ctx.status.set(state="failed", error=f"{phase.name}/{step.name} failed")
        raise PhaseFailed(
            f"Phase {phase.name} failed: step {step.name} exited non-zero. Log: {remote_log} (on this node: {local_log}).",
            ["Read the end of the log for nanochat's error.", f"Fix it, then run the same command again: finished phases are skipped and {phase.name} continues."],
        )

    # -- the whole run -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """The leader's run: one writer per model folder (the lease, taken before the first write; followers of a
        multi-node run never take it), and on several nodes the others follow the steps it announces."""
        with hold_model_lease(self.ctx, log=say), self.ctx.status.beating(self.ctx.options.heartbeat_sec):
            return self.crew.lead(self._run) if self.crew else self._run()

    def _run(self) -> int:
        ctx = self.ctx
        say(f"run {ctx.run_id}: {ctx.plan.model} ({ctx.plan.recipe}, nanochat {ctx.plan.commit[:7]}) on {ctx.plan.where()}; storage {ctx.storage.url}; scratch {ctx.scratch}")
        if ctx.options.rendezvous.multinode:
            say(f"this agent: {ctx.options.rendezvous.describe()}")
        try:
            ctx.storage.write_text(f"{ctx.run_dir}/plan.json", json.dumps(ctx.plan.to_dict(), indent=2))
            selected = self.select()
            self.preseed(selected)
            for phase, steps, marker in selected:
                self.run_phase(phase, steps, marker)
        except KeyboardInterrupt:
            ctx.status.set(state="interrupted")
            say("interrupted: the current step was stopped; run the same command again to continue")
            return EXIT_INTERRUPTED
        except OSError as e:
            full = disk_full_error(f"running phase {ctx.status.get('phase') or 'setup'}", e)
            if full is None:
                raise
            with contextlib.suppress(OSError):  # the status may live on the disk that is full
                ctx.status.set(state="failed", error=str(e))
            raise full from None
        except RunnerError as e:
            self._record_failure(e)
            raise
        ctx.status.set(state="succeeded" if not self.ledger.eval_failures else "succeeded_with_eval_failures", phase=None, step=None, skipped=self.ledger.skipped)
        self.summary()
        return EXIT_EVAL_FAILED if self.ledger.eval_failures else EXIT_OK

    def _record_failure(self, error: RunnerError) -> None:
        """An error that ends the run (from a checkpoint upload, say) leaves the record saying so, not "running".
        A phase that failed has already said more; a storage that does not answer would only make this wait. (A lost
        lease never comes here: it is a PermissionError, re-raised by the OSError branch without writing.)"""
        if isinstance(error, StorageNotAnswering) or self.ctx.status.get("state") == "failed":
            return
        with contextlib.suppress(Exception):
            self.ctx.status.set(state="failed", error=error.message.splitlines()[0])

    def summary(self) -> None:
        ctx = self.ctx
        say(f"run {ctx.run_id} finished; status: {ctx.storage.url_of(ctx.run_dir + '/status.json')}")
        for name, info in ctx.status.get("phases").items():
            say(f"  {name:<10} {info['state']:<24} {info.get('note', '')}")
        for failure in self.ledger.eval_failures:
            say(f"  evaluation failed: {failure}")
        for skip in self.ledger.skipped:
            say(f"  skipped: {skip}")
        if self.ledger.eval_failures:
            say(f"exit code {EXIT_EVAL_FAILED}: training finished, {len(self.ledger.eval_failures)} evaluation step(s) failed; rerun to retry only those")
