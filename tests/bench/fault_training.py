"""Fault scenarios the node agent already survived before the storage work (kill -9 of the agent at three points
of training and during a checkpoint upload, an S3 outage mid-run), measured the same way: every run must end with
the same checkpoints as a run without the fault."""

from __future__ import annotations

import hashlib
import signal
import sys
import time

from tests.bench.fault_lab import Lab, Outcome, Scenario, stop_within, wait_for
from tests.harness import pid_alive, preseed_files, read_calls, runner, seed_s3, smoke_plan

EXPECTED_STEPS = {5 * i for i in range(1, 9)}
_reference: dict[str, str] = {}


def checkpoint_digest(storage) -> dict[str, str]:
    """name -> sha256 of every .pt in the base checkpoint folder (meta holds timings, so it is left out)."""
    return {name: hashlib.sha256(storage.fs.cat(storage.path(f"base_checkpoints/d4/{name}"))).hexdigest()
            for name in storage.find("base_checkpoints/d4") if name.endswith(".pt")}


def reference(lab: Lab) -> dict[str, str]:
    """The checkpoints of the same plan run once without faults on local storage (computed once per benchmark)."""
    from runner.storage import open_storage

    if not _reference:
        ref = lab.root / "reference"
        ref.mkdir(exist_ok=True)
        preseed_files(ref / "storage")
        plan, env = smoke_plan(ref), Lab(lab.root, lab.server, tmp=ref).env()
        double = Lab(lab.root, lab.server, tmp=ref).double()
        for phase in ("data", "tokenizer", "base"):
            result = runner(["node", "run", "--plan", str(plan), "--storage", str(ref / "storage"), "--nanochat-dir", str(double),
                             "--python", sys.executable, "--only", phase], env)
            assert result.code == 0, result.output
        _reference.update(checkpoint_digest(open_storage(str(ref / "storage"))))
    return _reference


def _fault_run(lab: Lab, **env_extra):
    """A fresh bucket seeded with the pre-seeded inputs, and the node command of a short base run into it:
    (url, args, env, storage opened with the admin key)."""
    import os

    from runner.storage import open_storage

    url = lab.bucket()
    seed_s3(url, lab.server.storage_options(), lab.tmp)
    plan = smoke_plan(lab.tmp)
    args = ["node", "run", "--plan", str(plan), "--storage", url, "--nanochat-dir", str(lab.double()), "--python", sys.executable,
            "--run-id", "fault"]
    os.environ.update(lab.server.env())
    return url, args, lab.s3_env(**env_extra), open_storage(url, check=False)


def _kill_agent(lab: Lab, proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    trainers = [c["pid"] for c in read_calls(lab.tmp / "calls.jsonl") if c["module"] == "scripts.base_train"]
    wait_for(lambda: not any(pid_alive(p) for p in trainers), timeout=30)


def _recover(lab: Lab, url: str, args: list[str], env: dict, compare: bool = True) -> Outcome:
    """Run the same command again; seconds to recovery = that rerun; data lost = checkpoints not as without the fault
    (every step sealed and, with `compare`, the same bytes as the reference run)."""
    import os

    from runner.checkpoints import stored_checkpoints
    from runner.storage import open_storage

    started = time.monotonic()
    again = runner(args, env)
    seconds = time.monotonic() - started
    os.environ.update(lab.server.env())
    storage = open_storage(url, check=False)
    complete = set(stored_checkpoints(storage, "base_checkpoints/d4").complete)
    lost = complete != EXPECTED_STEPS or (compare and checkpoint_digest(storage) != reference(lab))
    return Outcome(again.code == 0, lost, seconds, "" if again.code == 0 else again.output[-200:].replace("\n", " "))


def kill_9_in_training(after_step: int):
    def scenario(lab: Lab) -> Outcome:
        from runner.checkpoints import stored_checkpoints

        reference(lab)
        url, args, env, storage = _fault_run(lab, NANOCHAT_DOUBLE_STEP_SEC="0.1")
        proc = lab.start(args, env)
        if after_step:
            reached = wait_for(lambda: after_step in stored_checkpoints(storage, "base_checkpoints/d4").complete, proc)
        else:
            reached = wait_for(lambda: any(c["module"] == "scripts.base_train" for c in read_calls(lab.tmp / "calls.jsonl")), proc)
        if not reached:
            proc.kill()
            return Outcome(False, False, float("nan"), "the run ended before the kill")
        _kill_agent(lab, proc)
        return _recover(lab, url, args, lab.s3_env())

    return scenario


def kill_9_during_upload(lab: Lab) -> Outcome:
    url, args, env, storage = _fault_run(lab, NANOCHAT_DOUBLE_STEP_SEC="0.05", NANOCHAT_DOUBLE_CKPT_MB="40")

    def mid_upload():
        listing = storage.find("base_checkpoints/d4")
        steps = {int(n.split("_")[1].split(".")[0]) for n in listing if n.startswith(("model_", "optim_"))}
        manifests = {int(n[9:15]) for n in listing if n.startswith("manifest_")}
        return sorted(steps - manifests) or None

    proc = lab.start(args, env)
    if not wait_for(mid_upload, proc):
        proc.kill()
        return Outcome(False, False, float("nan"), "no upload caught in progress")
    _kill_agent(lab, proc)
    # 40 MB checkpoint files differ from the reference run's by design: only completeness is compared.
    return _recover(lab, url, args, lab.s3_env(NANOCHAT_DOUBLE_CKPT_MB="40"), compare=False)


def s3_outage(lab: Lab) -> Outcome:
    """The S3 server is away for 6 s after the first checkpoint; seconds = from the outage's start to the run's end."""
    from runner.checkpoints import stored_checkpoints

    reference(lab)
    url, args, env, storage = _fault_run(lab, NANOCHAT_DOUBLE_STEP_SEC="0.3")
    proc = lab.start(args, env)
    if not wait_for(lambda: 5 in stored_checkpoints(storage, "base_checkpoints/d4").complete, proc):
        proc.kill()
        return Outcome(False, False, float("nan"), "no checkpoint before the run ended")
    started = time.monotonic()
    lab.server.outage(6.0)
    stop_within(proc, bound=300)
    seconds = time.monotonic() - started
    storage.invalidate()
    complete = set(stored_checkpoints(storage, "base_checkpoints/d4").complete)
    lost = complete != EXPECTED_STEPS or checkpoint_digest(storage) != reference(lab)
    return Outcome(proc.returncode == 0, lost, seconds, "rode it out without a rerun" if proc.returncode == 0 else lab.log()[-200:])


SCENARIOS = [
    Scenario("kill-9-start-of-training", "-", "kill -9 of the node agent as base_train starts", "s of the rerun", kill_9_in_training(0)),
    Scenario("kill-9-after-step-10", "-", "kill -9 after checkpoint 10 is in storage", "s of the rerun", kill_9_in_training(10)),
    Scenario("kill-9-after-step-25", "-", "kill -9 after checkpoint 25 is in storage", "s of the rerun", kill_9_in_training(25)),
    Scenario("kill-9-during-upload", "-", "kill -9 during a checkpoint upload", "s of the rerun", kill_9_during_upload),
    Scenario("s3-outage", "-", "S3 server away for 6 s mid-training", "s from outage to the run's end", s3_outage),
]
