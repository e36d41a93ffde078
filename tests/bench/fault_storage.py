"""Fault scenarios at the storage layer (rows 1, 3, 4, 10 and 12 of the robustness issue): a full disk, a silent
S3 endpoint, Ctrl-C and SIGTERM while files move, folders and keys that may not write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.bench.fault_lab import Lab, Outcome, Scenario, clear_error, stop_within, wait_for
from tests.harness import REPO, preseed_files, read_calls, runner, smoke_plan
from tests.infra.faults import SilentServer, small_disk, unwritable
from tests.infra.seaweedfs import READER_KEY, READER_SECRET

SHARDS = [f"shard_{i:05d}.parquet" for i in range(4)]
BIG_FILES, BIG_MB = 32, 8


def storage_disk_full(lab: Lab) -> Outcome:
    """Storage on a 72 KB disk: the data phase's shards do not fit. Then space is freed and the run repeated."""
    with small_disk(lab.tmp / "disk", 72) as resize:
        store = lab.tmp / "disk" / "store"
        preseed_files(store)
        first, seconds = lab.node(str(store), lab.env(), "--only", "data")
        scratch_shards = lab.tmp / "scratch" / "base" / "base_data"
        torn = [p.name for p in (store / "base_data").glob("*") if not (scratch_shards / p.name).exists()
                or p.stat().st_size != (scratch_shards / p.name).stat().st_size]
        resize(8192)
        again, _ = lab.node(str(store), lab.env())
        landed = sorted(p.name for p in (store / "base_data").iterdir())
    return Outcome(clear_error(first, "No space left") and again.code == 0, bool(torn) or landed != SHARDS, seconds,
                   "" if first.code else "the first run did not fail")


def silent_s3_endpoint(lab: Lab) -> Outcome:
    extra = {"RUNNER_STORAGE_TIMEOUT_SEC": lab.silent_budget} if lab.silent_budget else {}
    with SilentServer() as server:
        env = lab.env(AWS_ENDPOINT_URL=server.url, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", **extra)
        result, seconds = lab.node("s3://silent/run", env)
    reported = "storage not answering for" in result.output
    return Outcome(clear_error(result, "gave no answer") and reported and seconds < 120, False, seconds,
                   "" if reported else "no 'still trying' line")


PULL_DRIVER = ["-m", "tests.drive_pull"]  # STORAGE_URL LOCAL_FOLDER; exits 130 when stopped


def _big_files(lab: Lab) -> dict[str, int]:
    folder = lab.root / "big-files"
    if not folder.exists():
        folder.mkdir()
        block = os.urandom(1024 * 1024)
        for i in range(BIG_FILES):
            (folder / f"shard_{i:05d}.parquet").write_bytes(block * BIG_MB)
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _whole_subset(found: dict[str, int], whole: dict[str, int]) -> bool:
    return all(whole.get(name) == size for name, size in found.items())


def interrupt_staging(sig: int):
    def scenario(lab: Lab) -> Outcome:
        whole = _big_files(lab)
        url, env = lab.bucket(), lab.s3_env()
        sync = subprocess.run([sys.executable, "-m", "runner.cli", "sync", str(lab.root / "big-files"), url + "/base_data"],
                              env=env, cwd=str(REPO), capture_output=True, text=True)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        local = lab.tmp / "scratch" / "base_data"
        proc = lab.start([*PULL_DRIVER, url, str(local)], env)
        if not wait_for(lambda: local.exists() and any(p.suffix == ".parquet" for p in local.iterdir()), proc):
            proc.kill()
            return Outcome(False, False, float("nan"), "staging ended before the signal")
        proc.send_signal(sig)
        seconds = stop_within(proc)
        staged = {p.name: p.stat().st_size for p in local.iterdir() if p.suffix == ".parquet"}
        leftovers = [p for p in local.parent.rglob("*.part")]
        again = lab.start([*PULL_DRIVER, url, str(local)], env, "again.log")
        again.wait(timeout=300)
        final = {p.name: p.stat().st_size for p in local.iterdir()}
        stopped_early = len(staged) < len(whole)
        return Outcome(proc.returncode == 130 and again.returncode == 0 and stopped_early and not leftovers,
                       not _whole_subset(staged, whole) or final != whole, seconds,
                       f"{len(staged)}/{len(whole)} staged when stopped" + (f"; {len(leftovers)} .part left" if leftovers else ""))

    return scenario


def interrupt_sync(sig: int):
    def scenario(lab: Lab) -> Outcome:
        from runner.storage import open_storage

        whole = _big_files(lab)
        url, env = lab.bucket(), lab.s3_env()
        os.environ.update(lab.server.env())
        storage = open_storage(url, check=False)
        args = ["sync", str(lab.root / "big-files"), url + "/base_data", "--workers", "2"]
        proc = lab.start(args, env)
        def copied() -> dict[str, int]:  # the files of the sync (its storage probe under _runner/ is not one)
            return {n: s for n, (s, _) in storage.find("base_data").items() if n.endswith(".parquet")}

        if not wait_for(copied, proc):
            proc.kill()
            return Outcome(False, False, float("nan"), "sync ended before the signal")
        proc.send_signal(sig)
        seconds = stop_within(proc)
        landed = copied()
        again = lab.start(args, env, "again.log")
        again.wait(timeout=300)
        final = copied()
        return Outcome(proc.returncode == 130 and again.returncode == 0 and len(landed) < len(whole),
                       not _whole_subset(landed, whole) or final != whole, seconds, f"{len(landed)}/{len(whole)} copied when stopped")

    return scenario


def unwritable_checkpoint_folder(lab: Lab) -> Outcome:
    store = lab.tmp / "store"
    preseed_files(store)
    (store / "base_checkpoints").mkdir()
    with unwritable(store / "base_checkpoints"):
        first, seconds = lab.node(str(store), lab.env())
    trained = any(c["module"] == "scripts.base_train" for c in read_calls(lab.tmp / "calls.jsonl"))
    again, _ = lab.node(str(store), lab.env())
    return Outcome(clear_error(first, "cannot write into") and not trained and again.code == 0, again.code != 0, seconds,
                   "trained before refusing" if trained else "refused by the storage probe")


def checkpoint_folder_locked_mid_training(lab: Lab) -> Outcome:
    store = lab.tmp / "store"
    preseed_files(store)
    plan = smoke_plan(lab.tmp)
    env = lab.env(NANOCHAT_DOUBLE_STEP_SEC="0.1")
    folder = store / "base_checkpoints" / "d4"
    args = ["node", "run", "--plan", str(plan), "--storage", str(store), "--nanochat-dir", str(lab.double()),
            "--python", sys.executable, "--run-id", "bench"]
    proc = lab.start(args, env)
    if not wait_for(lambda: (folder / "manifest_000005.json").exists(), proc):
        proc.kill()
        return Outcome(False, False, float("nan"), "no checkpoint before the run ended")
    with unwritable(folder):
        seconds = stop_within(proc, bound=300)
    output = lab.log()
    clear = proc.returncode != 0 and "To fix:" in output and "Traceback" not in output and "not permitted" in output
    again = runner(args, env)
    manifests = sorted(p.name for p in folder.glob("manifest_*.json"))
    return Outcome(clear and again.code == 0, len(manifests) != 8, seconds, "seconds from the lock to the error (training ran on)")


def local_permission_message(lab: Lab) -> Outcome:
    parent = lab.tmp / "locked"
    parent.mkdir()
    with unwritable(parent):
        result, seconds = lab.node(str(parent / "store"), lab.env())
    wrong = "credentials" in result.output or "AWS_ACCESS_KEY_ID" in result.output
    return Outcome(clear_error(result, "not permitted") and not wrong, False, seconds, "blamed the credentials" if wrong else "")


def s3_read_only_key(lab: Lab) -> Outcome:
    url = lab.bucket()
    env = lab.s3_env()
    env.update(AWS_ACCESS_KEY_ID=READER_KEY, AWS_SECRET_ACCESS_KEY=READER_SECRET)
    result, seconds = lab.node(url, env)
    return Outcome(clear_error(result, "denied access"), False, seconds)


SCENARIOS = [
    Scenario("storage-disk-full", "1", "local storage disk fills up during staging, then space is freed", "s to the error", storage_disk_full),
    Scenario("silent-s3", "3", "S3 endpoint accepts connections and never answers", "s to the error", silent_s3_endpoint),
    Scenario("sigint-staging", "4", "Ctrl-C during shard staging (pull)", "s from signal to exit", interrupt_staging(signal.SIGINT)),
    Scenario("sigterm-staging", "4", "SIGTERM during shard staging (pull)", "s from signal to exit", interrupt_staging(signal.SIGTERM)),
    Scenario("sigint-sync", "4", "Ctrl-C during `runner sync`", "s from signal to exit", interrupt_sync(signal.SIGINT)),
    Scenario("sigterm-sync", "4", "SIGTERM during `runner sync`", "s from signal to exit", interrupt_sync(signal.SIGTERM)),
    Scenario("ckpt-folder-unwritable", "10", "checkpoint folder in storage not writable", "s to the error", unwritable_checkpoint_folder),
    Scenario("ckpt-folder-locked", "10", "checkpoint folder made unwritable during training", "s to the error", checkpoint_folder_locked_mid_training),
    Scenario("s3-read-only-key", "10", "S3 key that may only read (AccessDenied)", "s to the error", s3_read_only_key),
    Scenario("local-permission", "12", "local permission error on the storage folder", "s to the error", local_permission_message),
]
