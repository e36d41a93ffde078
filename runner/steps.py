"""Running one step of a phase on the node: what `--offline` changes, skipping a satisfied download, resuming
from storage, publishing checkpoints while it trains, the compile cache around it, streaming its output into the
log and the status record, and checking what it made.

`StepRunner` reads the run's `RunContext`, writes the run's `RunLedger`, and returns a `StepResult`; the agent
(node.py) owns the order of phases and what happens after each result.
"""

from __future__ import annotations

import time
from dataclasses import replace

from . import shards
from .compile_cache import EARLY_SAVE_AT_STEP, CompileCache, cache_key, probe
from .context import RunContext, RunLedger, StepResult, say
from .errors import RunnerError
from .lease import LeaseLost
from .nanochat_env import command, phase_env
from .process import run_streamed
from .progress import parse_line
from .resume import prepare_resume
from .status import now_iso


class StepRunner:
    def __init__(self, ctx: RunContext, ledger: RunLedger, crew=None, saves_cache: bool = True):
        self.ctx, self.ledger = ctx, ledger
        self.crew = crew  # several nodes, on the leader: multinode.Crew (announces steps to the other nodes)
        self.saves_cache = saves_cache  # one node saves the shared compile cache: the leader
        self.compile_cache: CompileCache | None = None

    def _offline_args(self, phase, step) -> list[str] | None:
        """The step's arguments given what --offline left missing; None when the step must be skipped."""
        missing = self.ledger.missing_for(step)
        if missing and step.offline == "without":
            say(f"{step.name}: {', '.join(missing)} missing (--offline): adding {' '.join(step.without)}")
            return [*step.args, *step.without]
        if missing:
            say(f"{step.name}: skipped, {', '.join(missing)} missing (--offline)")
            self.ledger.skipped.append(f"{phase.name}.{step.name}: {', '.join(missing)} missing (--offline)")
            self.ctx.status.step(phase.name, step.name, state="skipped", note="offline: " + ", ".join(missing))
            return None
        return list(step.args)

    def run(self, phase, step, sink, publishers) -> StepResult:
        ctx, status = self.ctx, self.ctx.status
        args = self._offline_args(phase, step)
        if args is None:
            return StepResult.SKIPPED
        data_dir = ctx.base_dir / ctx.plan.data["dir"]
        if step.skip_if == "shards" and not shards.problems(data_dir, ctx.plan.data):
            say(f"{step.name}: all {ctx.plan.data['shards']} shards are already here; nothing to download")
            status.step(phase.name, step.name, state="ok", note="shards already in storage")
            return StepResult.OK
        publisher = next((p for p in publishers if p.rel == step.checkpoints), None) if step.resume_flag else None
        resumed_from = None
        if publisher is not None:
            resume = prepare_resume(ctx.storage, step, publisher.local, ctx.state, fresh=phase.name in self.ledger.fresh, log=say,
                                    processes=self.processes(step), ranks=self.crew.ranks if self.crew else None)
            if resume:
                resumed_from = int(resume[0].split("=")[1])
                status.append("resumes", {"phase": phase.name, "step": step.name, "from": resume[0].split("=")[1], "at": now_iso()})
            args += resume
        # Several nodes: the other nodes run this step with the same arguments, once the leader announces it.
        announced = self.crew.announce(phase, step, args, resumed_from) if self.crew and step.all_gpus else None
        started = time.monotonic()
        if announced is None:
            code = self.execute(phase, step, args, sink, publisher)
        else:
            with self.crew.watch(announced, f"{phase.name}/{step.name}") as watch:
                code = self.execute(phase, step, args, sink, publisher, stop=watch.reason)
            self.crew.finished(announced, code)
            self.crew.wait(announced, f"{phase.name}/{step.name}", failed=code != 0)
        return self._judge(phase, step, code, round(time.monotonic() - started, 1), data_dir, sink)

    def processes(self, step) -> int:
        """The step's processes across all nodes (what a checkpoint's optimizer shards are counted against)."""
        return step.nproc * self.ctx.plan.nodes if step.all_gpus else step.nproc

    def execute(self, phase, step, args: list[str], sink, publisher=None, stop=None) -> int:
        """Run the step with these final arguments on this node: compile cache around it, checkpoints uploaded as
        they complete, output streamed to the log and the status; returns the exit code. `stop`: see run_streamed."""
        ctx, status = self.ctx, self.ctx.status
        env_extra = {}
        for name in step.uses:
            if name not in self.ledger.missing_items:
                env_extra.update(ctx.items[name].env(ctx.base_dir, ctx.cache_dir))
        env = phase_env(ctx.base_dir, ctx.cache_dir, env_extra)
        if publisher is not None:
            publisher.watch(self.processes(step))
        cache = self._restore_compile_cache() if step.compiles else None
        argv = command(ctx.nanochat, replace(step, args=args), ctx.options.rendezvous)
        header = f"==== {phase.name}/{step.name}: {' '.join(argv[1:])}"
        say(header.removeprefix("==== "))
        sink.write(header)
        status.set(step=step.name, progress={})
        status.step(phase.name, step.name, state="running", command=argv[1:])

        def on_line(line: str) -> None:
            progress, metrics = parse_line(line)
            if progress or metrics:
                status.progress(progress, metrics)
            if cache and self.saves_cache and progress.get("step", 0) >= EARLY_SAVE_AT_STEP and not cache.saves:
                cache.save_in_background(f"{step.name} reached step {progress['step']}")

        code = None
        try:
            code = run_streamed(argv, str(ctx.nanochat.root), env, sink, on_line, ctx.options.heartbeat_sec, f"{phase.name}/{step.name}",
                                stop=stop)
            return code
        finally:
            # Whatever happened to the trainer, what it completed goes to storage before we move on or stop.
            if publisher is not None:
                self._stop_uploads(phase, step, publisher, trainer_failed=code != 0)
            if cache and self.saves_cache:
                self._save_compile_cache(cache, f"{step.name} ended")

    def _stop_uploads(self, phase, step, publisher, trainer_failed: bool) -> None:
        """Upload what the step completed. When the trainer failed too, its failure leads (a scratch disk that filled
        up under both is reported by the phase, with its log): the upload's error is said, not raised in its place."""
        try:
            uploaded = publisher.stop_watching()
        except RunnerError as e:
            if not trainer_failed or isinstance(e, LeaseLost):
                raise
            say(f"{step.name}: checkpoint upload failed as well: {e.message.splitlines()[0]}")
            return
        self.ctx.status.step(phase.name, step.name, checkpoints_uploaded=uploaded)

    def _judge(self, phase, step, code: int, seconds: float, data_dir, sink) -> StepResult:
        status = self.ctx.status
        if code == 0 and step.verify == "shards":
            found = shards.problems(data_dir, self.ctx.plan.data)
            if found:
                sink.write(f"[runner] shard check failed: {'; '.join(found)}")
                say(f"{step.name}: the downloader exited 0 but {'; '.join(found)}")
                code = 1
        last_progress = status.get("progress")
        if code == 0:
            status.step(phase.name, step.name, state="ok", seconds=seconds, progress=last_progress)
            return StepResult.OK
        status.step(phase.name, step.name, state="failed", exit_code=code, seconds=seconds, progress=last_progress)
        if not step.critical:
            where = self.ctx.storage.url_of(self.ctx.phase_log(phase.name))
            say(f"{step.name}: failed with exit code {code} (evaluation: the run goes on); log: {where}")
            self.ledger.eval_failures.append(f"{phase.name}.{step.name} (exit {code})")
            status.set(eval_failures=list(self.ledger.eval_failures))
        return StepResult.FAILED

    def _restore_compile_cache(self) -> CompileCache:
        ctx = self.ctx
        if self.compile_cache is None:
            versions = probe(ctx.nanochat.python, ctx.nanochat.root)
            ctx.status.set(versions={**versions, "nanochat": ctx.nanochat.commit})
            self.compile_cache = CompileCache(ctx.storage, ctx.cache_dir, cache_key(versions, ctx.plan), log=say)
        try:
            outcome = self.compile_cache.restore()
        except Exception as e:  # noqa: BLE001 - a cache is an optimisation: a broken one means compiling
            outcome = "miss"
            say(f"compile cache could not be restored ({type(e).__name__}: {e}); compiling from scratch")
        ctx.status.set(compile_cache={"key": self.compile_cache.key, "restore": outcome})
        return self.compile_cache

    def _save_compile_cache(self, cache: CompileCache, reason: str) -> None:
        cache.wait()
        try:
            cache.save(reason)
        except Exception as e:  # noqa: BLE001
            say(f"compile cache could not be saved ({type(e).__name__}: {e})")
        self.ctx.status.set(compile_cache={"key": cache.key, "restore": cache.outcome, "saves": len(cache.saves)})
