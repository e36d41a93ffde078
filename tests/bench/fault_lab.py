"""What every fault scenario of the benchmark shares: a fresh folder per run, the S3 server, the nanochat test
double, the runner as a real process, and the shape of a result (`Outcome`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.harness import REPO, Result, base_env, make_double, runner

WAIT_SEC = 180


@dataclass
class Outcome:
    survived: bool  # a clear error (typed, with its fix, no traceback) or a recovery, and the next run succeeded
    data_lost: bool  # anything in storage torn, missing or different from a run without the fault
    seconds: float  # to the clear error, or to recovery (what `Scenario.measures` says)
    note: str = ""


@dataclass
class Scenario:
    name: str
    row: str  # the row of the issue table it checks ("-" for faults the runner already handled)
    what: str
    measures: str
    run: Callable[["Lab"], Outcome]


@dataclass
class Lab:
    root: Path
    server: object  # tests.infra.seaweedfs.SeaweedFS
    silent_budget: float | None = None
    tmp: Path = field(default=None)  # this run's own folder
    _buckets: int = 0

    def fresh(self, name: str) -> "Lab":
        tmp = self.root / name
        tmp.mkdir(parents=True)
        return Lab(self.root, self.server, self.silent_budget, tmp)

    def bucket(self) -> str:
        name = f"bench-{self.tmp.name.lower().replace('_', '-')}"[:60].rstrip("-")
        self.server.boto3_client().create_bucket(Bucket=name)
        return f"s3://{name}/run"

    def env(self, **extra) -> dict:
        return base_env(self.tmp, {k: str(v) for k, v in extra.items()})

    def s3_env(self, **extra) -> dict:
        return self.env(**self.server.env(), **extra)

    def double(self) -> Path:
        existing = self.tmp / "nanochat-seed"
        return existing if existing.exists() else make_double(self.tmp)

    def node(self, storage: str, env: dict, *extra: str, plan: Path | None = None) -> tuple[Result, float]:
        """`runner node run` to its end; returns the result and its seconds."""
        args = ["node", "run", "--storage", storage, "--nanochat-dir", str(self.tmp / "nanochat-seed"), "--python", sys.executable,
                "--run-id", "bench", *(["--plan", str(plan)] if plan else ["--recipe", "seed", "--model", "smoke"]), *extra]
        self.double()
        started = time.monotonic()
        result = runner(args, env, timeout=WAIT_SEC)
        return result, time.monotonic() - started

    def start(self, args: list[str], env: dict, log_name: str = "run.log") -> subprocess.Popen:
        """A runner command (or `python -c CODE` / `python -m MODULE` when args start with -c / -m) in the
        background; the caller stops it."""
        command = [sys.executable, *args] if args[0] in ("-c", "-m") else [sys.executable, "-m", "runner.cli", *args]
        return subprocess.Popen(command, env=env, cwd=str(REPO), stdout=(self.tmp / log_name).open("w"), stderr=subprocess.STDOUT)

    def log(self, name: str = "run.log") -> str:
        return (self.tmp / name).read_text()


def clear_error(result: Result, *words: str) -> bool:
    """A non-zero exit whose message has the words, says how to fix it and shows no traceback."""
    return result.code != 0 and "To fix:" in result.output and "Traceback" not in result.output and all(w in result.output for w in words)


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = WAIT_SEC, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(poll)
    return None


def stop_within(proc: subprocess.Popen, bound: float = 60) -> float:
    """Seconds from now until `proc` exits (it is killed past `bound`, and then reported as inf)."""
    started = time.monotonic()
    try:
        proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - started


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
