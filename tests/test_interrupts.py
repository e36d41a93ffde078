"""Ctrl-C and SIGTERM while files move: shard staging (pull) and `runner sync` stop within seconds instead of
working through every queued copy, leave no partial file under a real name, and the next run finishes the job.
Real processes, real signals, the real S3 server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import REPO, base_env, write_shards
from runner.storage import open_storage

FILES, MB = 48, 8
# How long a stopped process may take to exit before the test calls it a hang; the target (2 s) is printed by
# tests/bench/bench_faults.py, not asserted here.
EXIT_BOUND_SEC = 20
WAIT_SEC = 120


def make_files(folder: Path) -> dict[str, int]:
    return write_shards(folder, FILES, MB)


def wait_until(condition, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_SEC
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def stop_and_time(proc: subprocess.Popen, sig: int) -> float:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=EXIT_BOUND_SEC)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {EXIT_BOUND_SEC} s after the signal")
    return time.monotonic() - started


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


PULL_DRIVER = ["-m", "tests.drive_pull"]  # STORAGE_URL LOCAL_FOLDER; exits 130 when stopped


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_staging_stops_within_seconds_and_the_next_pull_completes(sig, s3_bucket, s3_env, tmp_path):
    whole = make_files(tmp_path / "shards")
    storage = open_storage(s3_bucket.url, check=False)
    for name in whole:  # seeded with the admin key through the runner's own upload
        storage.fs.put_file(str(tmp_path / "shards" / name), storage.path(f"base_data/{name}"))
    local = tmp_path / "scratch" / "base_data"
    env = base_env(tmp_path, s3_bucket.env)
    command = [sys.executable, *PULL_DRIVER, s3_bucket.url, str(local)]
    proc = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: local.exists() and any(p.suffix == ".parquet" for p in local.iterdir()), "the first staged shard", proc)
    stop_and_time(proc, sig)
    output = proc.stdout.read()
    assert proc.returncode == 130 and "pull interrupted" in output, output
    staged = {p.name: p.stat().st_size for p in local.iterdir() if p.suffix == ".parquet"}
    assert len(staged) < len(whole), "the pull finished before the signal: it proves nothing"
    assert all(whole[name] == size for name, size in staged.items()), "a torn shard under a real name"
    assert no_temporary_files(tmp_path / "scratch")

    again = subprocess.run(command, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=WAIT_SEC)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"pulled {len(whole) - len(staged)} files" in again.stdout
    assert {p.name: p.stat().st_size for p in local.iterdir()} == whole


def run_sync(src: str, dst: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "sync", src, dst, "--workers", "2"], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_runner_sync_stops_within_seconds_and_the_next_sync_completes(sig, s3_bucket, s3_env, tmp_path):
    whole = make_files(tmp_path / "src" / "base_data")
    env = base_env(tmp_path, s3_bucket.env)
    storage = open_storage(s3_bucket.url, check=False)
    proc = run_sync(str(tmp_path / "src"), s3_bucket.url, env)
    wait_until(lambda: storage.find("base_data"), "the first copied file", proc)
    stop_and_time(proc, sig)
    output = proc.stdout.read()
    assert proc.returncode == 130 and "sync interrupted" in output, output
    assert "Traceback" not in output
    landed = {name: size for name, (size, _) in storage.find("base_data").items()}
    assert len(landed) < len(whole), "the sync finished before the signal: it proves nothing"
    assert all(whole[name] == size for name, size in landed.items()), "a partial object under a real name"

    again = run_sync(str(tmp_path / "src"), s3_bucket.url, env)
    out, _ = again.communicate(timeout=WAIT_SEC)
    assert again.returncode == 0, out
    assert f"{len(landed)} identical" in out
    assert {name: size for name, (size, _) in storage.find("base_data").items()} == whole


def test_runner_sync_into_a_local_folder_leaves_no_partial_file_when_stopped(s3_bucket, s3_env, tmp_path):
    whole = make_files(tmp_path / "src" / "base_data")
    storage = open_storage(s3_bucket.url, check=False)
    for name in whole:
        storage.fs.put_file(str(tmp_path / "src" / "base_data" / name), storage.path(f"base_data/{name}"))
    env = base_env(tmp_path, s3_bucket.env)
    dst = tmp_path / "dst"
    proc = run_sync(s3_bucket.url, str(dst), env)
    wait_until(lambda: (dst / "base_data").exists() and any(p.suffix == ".parquet" for p in (dst / "base_data").iterdir()),
               "the first copied file", proc)
    stop_and_time(proc, signal.SIGINT)
    assert proc.returncode == 130, proc.stdout.read()
    landed = {p.name: p.stat().st_size for p in (dst / "base_data").iterdir() if p.suffix == ".parquet"}
    assert len(landed) < len(whole) and all(whole[n] == s for n, s in landed.items())
    assert no_temporary_files(dst)


def test_a_copy_stuck_in_one_call_leaves_no_temporary_file_when_its_batch_stops(tmp_path):
    """A copy that cannot see the stop request (blocked inside one call, as a slow network read can be) is
    abandoned after the grace period, and the temporary file it was writing is removed all the same."""
    import threading

    from runner.storage_copy import write_local_atomically
    from runner.storage_wait import Watch
    from runner.transfer_pool import run_batch

    release = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        def fill(f):
            f.write(b"half")
            started.set()
            release.wait(30)  # blocked in a call that never checks the stop request

        write_local_atomically(str(tmp_path / "shard.parquet"), fill)

    def failing() -> None:
        started.wait(10)
        raise OSError("the other copy failed")

    stopped = time.monotonic()
    with pytest.raises(OSError, match="the other copy failed"):
        run_batch([stuck, failing], workers=2, watch=Watch("test copies", "file://test", log=lambda *_: None))
    stopped = time.monotonic() - stopped
    try:
        assert stopped < 10, stopped  # the batch does not wait for the stuck copy
        assert no_temporary_files(tmp_path), sorted(p.name for p in tmp_path.iterdir())
        assert not (tmp_path / "shard.parquet").exists()
    finally:
        release.set()


def test_a_file_another_thread_creates_after_the_stop_cannot_outlive_the_batch(tmp_path):
    """s3fs opens the local file from its own event loop once the GET answers, which can be after the batch has
    stopped and the process is on its way out: that late open fails, because the copy's landing folder is gone."""
    import threading

    from runner.storage_copy import landing
    from runner.storage_wait import Watch
    from runner.transfer_pool import run_batch

    answered, written, started = threading.Event(), threading.Event(), threading.Event()
    late: dict[str, BaseException] = {}

    def sdk_loop(path: str) -> None:  # stands in for the SDK's thread that writes the downloaded bytes
        answered.wait(30)
        try:
            with open(path, "wb") as f:
                f.write(b"bytes that arrived too late")
        except OSError as e:
            late["error"] = e
        finally:
            written.set()

    def copy() -> None:
        with landing(str(tmp_path / "shard.parquet")) as part:
            threading.Thread(target=sdk_loop, args=(part,), daemon=True).start()
            started.set()
            written.wait(30)  # as fsspec's sync() waits on its event loop: deaf to the stop request

    def failing() -> None:
        started.wait(10)
        raise OSError("the other copy failed")

    with pytest.raises(OSError, match="the other copy failed"):
        run_batch([copy, failing], workers=2, watch=Watch("test copies", "file://test", log=lambda *_: None))
    answered.set()
    assert written.wait(10)
    assert isinstance(late.get("error"), FileNotFoundError), late
    assert no_temporary_files(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "shard.parquet").exists()
