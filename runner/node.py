"""The node agent (`runner node run`): the only code that touches nanochat, identical on every backend.

For each phase of the plan it stages what the phase needs from storage into local scratch (used as
NANOCHAT_BASE_DIR), runs the phase's steps from the nanochat checkout, pushes what the phase made back to
storage, and writes a marker so a rerun skips it. Before any phase it pre-seeds the files nanochat would
otherwise download lazily. Evaluation steps may fail without stopping the run; the exit code says so.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import markers, preseed, shards
from .checkpoints import is_checkpoint_dir, seal
from .compile_cache import CompileCache
from .errors import PhaseFailed, PlanError
from .nanochat_env import locate
from .process import LogSink
from .recipes import load_recipe
from .resume import stage_newest_complete
from .status import StatusFile, run_dir
from .steps import StepRunner, say
from .storage import open_storage
from .transfer import SyncState, pull, push

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
    force: bool = False
    from_phase: str | None = None
    only_phase: str | None = None
    heartbeat_sec: float = 60.0
    log_upload_sec: float = 15.0


def default_scratch() -> Path:
    """Fast local disk: /scratch when the image or host provides it, else the system temp dir."""
    if os.access("/scratch", os.W_OK):
        return Path("/scratch")
    return Path(tempfile.gettempdir()) / "nanochat-runner-scratch"


def run_node(plan, options: NodeOptions) -> int:
    """Entry point of `runner node run`; returns the process exit code."""
    _check_phase_names(plan, options)
    storage = open_storage(options.storage, options.storage_options)
    nanochat = locate(options.nanochat_dir, options.python, plan.commit, plan.recipe)
    agent = NodeAgent(plan, options, storage, nanochat)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return agent.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _check_phase_names(plan, options: NodeOptions) -> None:
    if options.from_phase and options.only_phase:
        raise PlanError("--from and --only cannot be combined.", ["Use --from PHASE to run from a phase on, or --only PHASE for one phase."])
    recipe_phases = [p["name"] for p in load_recipe(plan.recipe)["phase"]]
    for name in (options.from_phase, options.only_phase):
        if name and name not in plan.phase_names():
            if name in recipe_phases:
                raise PlanError(f"Phase {name!r} is not in this plan.", ["Add --with-rl to include the RL phase."])
            raise PlanError(f"Unknown phase {name!r}.", [f"Use one of: {', '.join(plan.phase_names())}."])


class NodeAgent(StepRunner):
    def __init__(self, plan, options: NodeOptions, storage, nanochat):
        self.plan, self.options, self.storage, self.nanochat = plan, options, storage, nanochat
        self.scratch = Path(options.scratch).expanduser() if options.scratch else default_scratch()
        self.base_dir = self.scratch / "base"
        self.cache_dir = self.scratch / "cache"
        self.log_dir = self.scratch / "logs" / options.run_id
        for folder in (self.base_dir, self.cache_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.state = SyncState(self.scratch)
        self.run_dir = run_dir(options.run_id)
        self.status = StatusFile(storage, plan, options.run_id, log=say)
        self.keys = markers.phase_keys(plan)
        self.items = preseed.items(plan)
        self.missing_items: dict[str, str] = {}  # pre-seed items absent in an --offline run
        self.unavailable: dict[str, str] = {}  # storage path -> why no phase made it in this run
        self.eval_failures: list[str] = []
        self.skipped: list[str] = []
        self.forced: set[str] = set()  # phases run again on request: resumable steps start fresh
        self.compile_cache: CompileCache | None = None

    # -- selection ---------------------------------------------------------------------------------------------

    def select(self) -> list[tuple]:
        """[(phase, steps to run, previous marker or None)] for the phases this invocation runs."""
        names = self.plan.phase_names()
        if self.options.only_phase:
            chosen, forced = {self.options.only_phase}, True
        elif self.options.from_phase:
            chosen, forced = set(names[names.index(self.options.from_phase):]), True
        else:
            chosen, forced = set(names), self.options.force
        if forced:
            self.forced = set(chosen)
        selected = []
        for phase in self.plan.phases:
            if phase.name not in chosen:
                continue
            marker = None if forced else markers.read_marker(self.storage, phase.name, self.keys[phase.name])
            if marker is None:
                selected.append((phase, list(phase.steps), None))
                continue
            redo = {*marker.get("steps_failed", [])}
            if not self.options.offline:
                redo |= set(marker.get("steps_skipped", []))
            steps = [s for s in phase.steps if s.name in redo]
            if steps:
                say(f"phase {phase.name}: done by run {marker['run_id']}, rerunning {', '.join(s.name for s in steps)}")
                selected.append((phase, steps, marker))
            else:
                say(f"phase {phase.name}: done (marker {marker['key']} from run {marker['run_id']}), skipping")
                self.status.phase(phase.name, state="done", marker=marker["key"], note=f"skipped: done by run {marker['run_id']}")
        return selected

    # -- pre-seeding -------------------------------------------------------------------------------------------

    def preseed(self, selected) -> None:
        needed = sorted({name for _, steps, _ in selected for step in steps for name in step.uses})
        failed: dict[str, str] = {}
        for name in needed:
            item = self.items[name]
            if self.storage.find(item.path):
                continue
            if self.options.offline:
                self.missing_items[name] = f"not in storage at {self.storage.url_of(item.path)}"
                continue
            self.status.set(state="preseeding", step=f"preseed:{name}")
            try:
                local = preseed.fetch(item, self.scratch, self.nanochat, self.base_dir, self.cache_dir, log=say)
                push(self.storage, local, item.path, self.state, log=say)
            except Exception as e:  # noqa: BLE001 - reported together below, before any training
                failed[name] = f"{type(e).__name__}: {e}"
        if failed:
            self.status.set(state="failed", error="pre-seed failed: " + ", ".join(failed))
            raise preseed.missing_error(failed, self.items, self.storage.url)
        for name, reason in self.missing_items.items():
            say(f"--offline: {name} is {reason}; steps that need it will be skipped or run without it")

    # -- phases ------------------------------------------------------------------------------------------------

    def _pull(self, rel: str, local: Path) -> None:
        if is_checkpoint_dir(rel):
            # Only the newest complete checkpoint: what nanochat loads, never a torn one.
            stage_newest_complete(self.storage, rel, local, self.state, log=say)
            return
        # Only the plan's shards: a bucket may hold more from a bigger run, and nanochat takes the last shard
        # in sort order as its validation split, so extra shards would also change the validation data.
        only = set(shards.expected_names(self.plan.data)) if rel == self.plan.data["dir"] else None
        pull(self.storage, rel, local, self.state, log=say, only=only)

    def stage_in(self, phase, steps, marker) -> bool:
        """Pull the phase's inputs; False when an input was not made because an earlier phase was skipped."""
        for need in phase.needs:
            if self.storage.find(need):
                self._pull(need, self.base_dir / need)
            elif need in self.unavailable:
                self._skip_phase(phase, f"needs {need}, {self.unavailable[need]}")
                return False
            else:
                maker = next((p.name for p in self.plan.phases if need in p.makes), None)
                fix = f"Run phase {maker} first: `runner node run ... --from {maker}`." if maker else f"Put {need} into storage."
                raise PhaseFailed(f"Phase {phase.name} needs {self.storage.url_of(need)}, which is not in storage.", [fix])
        for rel in [*phase.prestage, *(phase.makes if marker else []), REPORT_DIR]:
            self._pull(rel, self.base_dir / rel)
        for name in sorted({n for s in steps for n in s.uses} - set(self.missing_items)):
            item = self.items[name]
            self._pull(item.path, item.local(self.base_dir, self.cache_dir))
        return True

    def stage_out(self, phase) -> None:
        for rel in [*phase.makes, REPORT_DIR]:
            push(self.storage, self.base_dir / rel, rel, self.state, log=say)
            if is_checkpoint_dir(rel):
                seal(self.storage, self.base_dir / rel, rel, log=say)

    def _skip_phase(self, phase, reason: str) -> None:
        say(f"phase {phase.name}: skipped ({reason})")
        self.skipped.append(f"{phase.name}: {reason}")
        self.status.phase(phase.name, state="skipped", note=reason)
        for made in phase.makes:
            self.unavailable[made] = f"which phase {phase.name} did not make ({reason})"

    def run_phase(self, phase, steps, marker) -> None:
        self.status.set(state="running", phase=phase.name, step=None)
        self.status.phase(phase.name, state="staging", started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        started = time.monotonic()
        if not self.stage_in(phase, steps, marker):
            return
        ok = list(marker.get("steps_ok", [])) if marker else []
        failed, skipped = [], []
        sink = LogSink(self.log_dir / f"{phase.name}.log", self.storage, f"{self.run_dir}/logs/{phase.name}.log", self.options.log_upload_sec, log=say)
        try:
            for step in steps:
                outcome = self.run_step(phase, step, sink)
                {"ok": ok, "failed": failed, "skipped": skipped}[outcome].append(step.name)
                if outcome == "skipped" and step.critical:
                    sink.close()
                    self._skip_phase(phase, f"step {step.name} was skipped: {', '.join(self.missing_for(step))} missing")
                    return
                if outcome == "failed" and step.critical:
                    sink.close()
                    self._fail(phase, step)
        finally:
            if not sink.stop.is_set():
                sink.close()
        self.stage_out(phase)
        markers.write_marker(self.storage, phase, self.keys[phase.name], self.options.run_id, ok, failed, skipped)
        self.status.phase(phase.name, state="done" if not failed else "done_with_eval_failures", seconds=round(time.monotonic() - started, 1))
        say(f"phase {phase.name}: done in {(time.monotonic() - started) / 60:.1f} min")

    def _fail(self, phase, step) -> None:
        for rel in [REPORT_DIR]:
            push(self.storage, self.base_dir / rel, rel, self.state, log=say)
        remote_log = self.storage.url_of(f"{self.run_dir}/logs/{phase.name}.log")
        local_log = self.log_dir / f"{phase.name}.log"
        self.status.phase(phase.name, state="failed", failed_step=step.name)
        self.status.set(state="failed", error=f"{phase.name}/{step.name} failed")
        raise PhaseFailed(
            f"Phase {phase.name} failed: step {step.name} exited non-zero. Log: {remote_log} (on this node: {local_log}).",
            ["Read the end of the log for nanochat's error.", f"Fix it, then run the same command again: finished phases are skipped and {phase.name} starts over."],
        )

    # -- the whole run -----------------------------------------------------------------------------------------

    def run(self) -> int:
        self.storage.write_text(f"{self.run_dir}/plan.json", json.dumps(self.plan.to_dict(), indent=2))
        say(f"run {self.options.run_id}: {self.plan.model} ({self.plan.recipe}, nanochat {self.plan.commit[:7]}) on {self.plan.gpus} GPU(s); storage {self.storage.url}; scratch {self.scratch}")
        try:
            selected = self.select()
            self.preseed(selected)
            for phase, steps, marker in selected:
                self.run_phase(phase, steps, marker)
        except KeyboardInterrupt:
            self.status.set(state="interrupted")
            say("interrupted: the current step was stopped; run the same command again to continue")
            return EXIT_INTERRUPTED
        self.status.set(state="succeeded" if not self.eval_failures else "succeeded_with_eval_failures", phase=None, step=None, skipped=self.skipped)
        self.summary()
        return EXIT_EVAL_FAILED if self.eval_failures else EXIT_OK

    def summary(self) -> None:
        say(f"run {self.options.run_id} finished; status: {self.storage.url_of(self.run_dir + '/status.json')}")
        for name, info in self.status.data["phases"].items():
            say(f"  {name:<10} {info['state']:<24} {info.get('note', '')}")
        for failure in self.eval_failures:
            say(f"  evaluation failed: {failure}")
        for skip in self.skipped:
            say(f"  skipped: {skip}")
        if self.eval_failures:
            say(f"exit code {EXIT_EVAL_FAILED}: training finished, {len(self.eval_failures)} evaluation step(s) failed; rerun to retry only those")
