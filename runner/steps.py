"""Running one step of a phase on the node: what `--offline` changes, skipping a satisfied download, resuming
from storage, the background checkpoint uploader, the compile cache around it, streaming its output into the
log and the status file, and checking what it made. `NodeAgent` (node.py) mixes this in."""

from __future__ import annotations

import time

from . import shards
from .checkpoints import CheckpointUploader
from .compile_cache import EARLY_SAVE_AT_STEP, CompileCache, cache_key, probe
from .nanochat_env import command, phase_env
from .process import run_streamed
from .progress import parse_line
from .resume import prepare_resume


def say(message: str) -> None:
    print(f"[runner] {message}", flush=True)


class StepRunner:
    """The per-step half of the node agent; expects the attributes NodeAgent sets up."""

    def missing_for(self, step) -> list[str]:
        return [n for n in step.uses if n in self.missing_items]

    def run_step(self, phase, step, sink) -> str:
        """Run one step; returns "ok", "failed" or "skipped"."""
        args = list(step.args)
        missing = self.missing_for(step)
        if missing and step.offline == "without":
            args += step.without
            say(f"{step.name}: {', '.join(missing)} missing (--offline): adding {' '.join(step.without)}")
        elif missing:
            say(f"{step.name}: skipped, {', '.join(missing)} missing (--offline)")
            self.skipped.append(f"{phase.name}.{step.name}: {', '.join(missing)} missing (--offline)")
            self.status.step(phase.name, step.name, state="skipped", note="offline: " + ", ".join(missing))
            return "skipped"
        data_dir = self.base_dir / self.plan.data["dir"]
        if step.skip_if == "shards" and not shards.problems(data_dir, self.plan.data):
            say(f"{step.name}: all {self.plan.data['shards']} shards are already here; nothing to download")
            self.status.step(phase.name, step.name, state="ok", note="shards already in storage")
            return "ok"
        env_extra = {}
        for name in step.uses:
            if name not in missing:
                env_extra.update(self.items[name].env(self.base_dir, self.cache_dir))
        env = phase_env(self.base_dir, self.cache_dir, env_extra)
        uploader = None
        if step.resume_flag:
            local_ckpt = self.base_dir / step.checkpoints
            resume = prepare_resume(self.storage, step, local_ckpt, self.state, fresh=phase.name in self.forced, log=say)
            if resume:
                self.status.data["resumes"].append({"phase": phase.name, "step": step.name, "from": resume[0].split("=")[1], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            args += resume
            uploader = CheckpointUploader(self.storage, local_ckpt, step.checkpoints, step.nproc, self.state, log=say).start()
        cache = self._restore_compile_cache() if step.compiles else None
        argv = command(self.nanochat, step.__class__(**{**step.__dict__, "args": args}))
        header = f"==== {phase.name}/{step.name}: {' '.join(argv[1:])}"
        say(header.removeprefix("==== "))
        sink.write(header)
        self.status.set(step=step.name, progress={})
        self.status.step(phase.name, step.name, state="running", command=argv[1:])
        started = time.monotonic()

        def on_line(line: str) -> None:
            progress, metrics = parse_line(line)
            if progress or metrics:
                self.status.progress(progress, metrics)
            if cache and progress.get("step", 0) >= EARLY_SAVE_AT_STEP and not cache.saves:
                cache.save_in_background(f"{step.name} reached step {progress['step']}")

        try:
            code = run_streamed(argv, str(self.nanochat.root), env, sink, on_line, self.options.heartbeat_sec, f"{phase.name}/{step.name}")
        finally:
            # Whatever happened to the trainer, what it completed goes to storage before we move on or stop.
            if uploader:
                uploaded = uploader.finish()
                self.status.step(phase.name, step.name, checkpoints_uploaded=uploaded)
            if cache:
                self._save_compile_cache(cache, f"{step.name} ended")
        seconds = round(time.monotonic() - started, 1)
        if code == 0 and step.verify == "shards":
            found = shards.problems(data_dir, self.plan.data)
            if found:
                sink.write(f"[runner] shard check failed: {'; '.join(found)}")
                say(f"{step.name}: the downloader exited 0 but {'; '.join(found)}")
                code = 1
        last_progress = dict(self.status.data["progress"])
        if code == 0:
            self.status.step(phase.name, step.name, state="ok", seconds=seconds, progress=last_progress)
            return "ok"
        self.status.step(phase.name, step.name, state="failed", exit_code=code, seconds=seconds, progress=last_progress)
        if not step.critical:
            where = self.storage.url_of(f"{self.run_dir}/logs/{phase.name}.log")
            say(f"{step.name}: failed with exit code {code} (evaluation: the run goes on); log: {where}")
            self.eval_failures.append(f"{phase.name}.{step.name} (exit {code})")
            self.status.set(eval_failures=self.eval_failures)
        return "failed"

    def _restore_compile_cache(self) -> CompileCache:
        if self.compile_cache is None:
            versions = probe(self.nanochat.python, self.nanochat.root)
            self.status.set(versions={**versions, "nanochat": self.nanochat.commit})
            key = cache_key(versions, self.plan)
            self.compile_cache = CompileCache(self.storage, self.cache_dir, key, log=say)
        try:
            outcome = self.compile_cache.restore()
        except Exception as e:  # noqa: BLE001 - a cache is an optimisation: a broken one means compiling
            outcome = "miss"
            say(f"compile cache could not be restored ({type(e).__name__}: {e}); compiling from scratch")
        self.status.set(compile_cache={"key": self.compile_cache.key, "restore": outcome})
        return self.compile_cache

    def _save_compile_cache(self, cache: CompileCache, reason: str) -> None:
        cache.wait()
        try:
            cache.save(reason)
        except Exception as e:  # noqa: BLE001
            say(f"compile cache could not be saved ({type(e).__name__}: {e})")
        self.status.set(compile_cache={"key": cache.key, "restore": cache.outcome, "saves": len(cache.saves)})

