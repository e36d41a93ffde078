"""A node agent that is not node rank 0: it follows the leader's steps (multinode.py) until the launch ends.

For each step the leader announces it stages what the step reads into its own scratch (the phase's inputs, the
newest complete checkpoint of what the phase makes so far: model and meta, and when the step resumes, this node's
own ranks' optimizer shards of the leader's chosen step), runs the same command under the same torchrun
rendezvous (stopping its part at once when the leader's done record says the step failed there), uploads its own
ranks' checkpoint files with a part record, and answers. It writes no marker, no status and no manifest (the
leader's), and its log goes to `logs/<phase>.node<R>.log` in the run's folder.
"""

from __future__ import annotations

from .checkpoints import NodeShare, is_checkpoint_dir
from .context import RunLedger, say
from .errors import PlanError, RunnerError
from .multinode import LaunchBoard, StepWatch, follower_log, node_ranks
from .process import LogSink
from .publish import CheckpointPublisher
from .resume import drop_local, stage_newest_complete
from .shards import expected_names
from .status import StatusFile
from .steps import StepRunner
from .transfer import pull

EXIT_INTERRUPTED = 130


class QuietStatus(StatusFile):
    """A follower keeps its status in memory: the run's status record in storage is the leader's alone."""

    def write(self) -> None:
        pass


class Follower:
    def __init__(self, ctx):
        self.ctx = ctx
        ctx.status = QuietStatus(ctx.storage, ctx.plan, ctx.run_id, log=say)
        rendezvous = ctx.options.rendezvous
        self.board = LaunchBoard(ctx.storage, ctx.run_id, rendezvous, ctx.options.leader_wait_sec, log=say)
        self.ledger = RunLedger()
        self.ranks = node_ranks(rendezvous, ctx.plan.gpus)
        self.share = NodeShare(leader=False, ranks=self.ranks, board=self.board, wait_sec=ctx.options.leader_wait_sec)
        self.steps = StepRunner(ctx, self.ledger, saves_cache=False)
        self.sinks: dict[str, LogSink] = {}

    def run(self) -> int:
        ctx, rendezvous = self.ctx, self.ctx.options.rendezvous
        say(f"run {ctx.run_id}: {rendezvous.describe()}; ranks {self.ranks.start}-{self.ranks.stop - 1}; storage {ctx.storage.url}; scratch {ctx.scratch}")
        index = 1
        try:
            while True:
                event = self.board.next_event(index, f"step {index} of launch {rendezvous.launch_id}")
                if "end" in event:
                    end = event["end"]
                    say(f"the leader ended launch {rendezvous.launch_id}: {end.get('state')} (exit code {end.get('exit_code')})")
                    try:
                        self.board.acknowledge_end()
                    except Exception as e:  # noqa: BLE001 - the leader then waits out its short bound
                        say(f"could not tell the leader this node has ended ({type(e).__name__}: {e})")
                    return int(end.get("exit_code") or 0)
                try:
                    code = self.follow(event, index)
                except RunnerError as e:  # this node cannot take part: say so at once, so the leader need not wait out its bound
                    self.board.answer(index, e.exit_code or 1, error=e.message.splitlines()[0])
                    raise
                self.board.answer(index, code)
                index += 1
        except KeyboardInterrupt:
            say("interrupted: the current step was stopped; start this node again with the leader to continue")
            return EXIT_INTERRUPTED
        finally:
            for sink in self.sinks.values():
                sink.close()

    def follow(self, event: dict, index: int) -> int:
        """Run one announced step here; returns its exit code (after this node's checkpoint files are in storage)."""
        ctx = self.ctx
        phase = ctx.plan.phase(event["phase"])
        step = next((s for s in phase.steps if s.name == event["step"]), None)
        if step is None or step.module != event["module"]:
            raise PlanError(f"The leader announced {event['phase']}/{event['step']}, which this node's plan does not have.",
                            ["Start every node with the same plan (the same `runner plan` options, or the same --plan file)."])
        self.stage(phase, step, event.get("resume_from"))
        publishers = CheckpointPublisher.for_phase(ctx, phase, say, self.share)
        resuming = next((p for p in publishers if step.resume_flag and p.rel == step.checkpoints), None)
        others = [p for p in publishers if p is not resuming]
        sink = self.sinks.get(phase.name) or self.sinks.setdefault(phase.name, LogSink(
            ctx.log_dir / f"{phase.name}.node{ctx.options.rendezvous.node_rank}.log", ctx.storage,
            follower_log(ctx.run_id, phase.name, ctx.options.rendezvous.node_rank), ctx.options.log_upload_sec, log=say))
        # Every checkpoint folder the phase makes is watched: this node's ranks write their optimizer shards there.
        for publisher in others:
            publisher.watch(self.steps.processes(step))
        try:
            with StepWatch(self.board, index, f"{phase.name}/{step.name}") as watch:  # the leader failed it: stop at once
                code = self.steps.execute(phase, step, list(event["args"]), sink, resuming, stop=watch.reason)
        finally:
            for publisher in others:
                publisher.stop_watching()
        say(f"{phase.name}/{step.name}: exit code {code} on this node")
        return code

    def stage(self, phase, step, resume_from: int | None) -> None:
        ctx = self.ctx
        for rel in [*phase.needs, *(r for r in phase.makes if is_checkpoint_dir(r) and not (step.resume_flag and r == step.checkpoints))]:
            if not ctx.storage.find(rel):
                continue
            if is_checkpoint_dir(rel):  # the model and meta the step loads; no optimizer shards
                stage_newest_complete(ctx.storage, rel, ctx.base_dir / rel, ctx.state, log=say, ranks=())
            else:
                only = set(expected_names(ctx.plan.data)) if rel == ctx.plan.data["dir"] else None
                pull(ctx.storage, rel, ctx.base_dir / rel, ctx.state, log=say, only=only)
        for name in step.uses:
            item = ctx.items[name]
            if ctx.storage.find(item.path):
                pull(ctx.storage, item.path, item.local(ctx.base_dir, ctx.cache_dir), ctx.state, log=say)
            else:
                self.ledger.missing_items[name] = "not in storage"
        if step.checkpoints and step.resume_flag:
            local = ctx.base_dir / step.checkpoints
            if resume_from is None:
                drop_local(local, None)  # a fresh start: leftovers of a killed launch must not be loaded
            else:
                stage_newest_complete(ctx.storage, step.checkpoints, local, ctx.state, log=say, ranks=self.ranks, at_step=resume_from)
                say(f"{step.name}: resuming from step {resume_from} with this node's shards (ranks {self.ranks.start}-{self.ranks.stop - 1})")
