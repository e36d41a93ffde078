"""Storage faults at the transfer layer, on real disks and a real S3 server: a disk that fills up (a small tmpfs),
folders nobody may write (chattr +i binds root too), a key that may only read, and an S3 endpoint that accepts
connections and never answers. Each must fail at once (or within the storage budget) with its own cause and fix,
leave no torn file under a real name, and let the same command succeed once the cause is gone."""

from __future__ import annotations

import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from harness import base_env, make_double, node_run, preseed_files, read_calls, runner
from runner import transfer
from runner.uploader import CheckpointUploader
from runner.storage import open_storage
from runner.storage_errors import StorageDiskFull, StorageNotAnswering, StoragePermissionDenied
from runner.transfer import SyncState, pull, push
from tests.infra.faults import SilentServer, small_disk, unwritable
from tests.infra.seaweedfs import READER_KEY, READER_SECRET

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs and chattr need root")
# Old behaviour: a full disk was retried for 180 s, a refused permission for 30 minutes. Far above any real run.
AT_ONCE_SEC = 30


def quiet(*_):
    pass


def make_files(folder: Path, count: int, kb: int) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"shard_{i:05d}.parquet").write_bytes(os.urandom(kb * 1024))
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def assert_nothing_torn(folder: Path, whole: dict[str, int]) -> None:
    """Every file under `folder` carries a real name and its full size; no temporary file is left."""
    for path in folder.rglob("*"):
        assert not path.name.endswith(".part"), f"temporary file or landing folder left: {path}"
        if path.is_file():
            if path.name in whole:
                assert path.stat().st_size == whole[path.name], f"torn file under a real name: {path}"


@needs_root
def test_a_full_storage_disk_fails_at_once_leaves_nothing_torn_and_succeeds_once_freed(tmp_path):
    whole = make_files(tmp_path / "local", 8, 100)
    with small_disk(tmp_path / "disk", 350) as resize:
        storage = open_storage(str(tmp_path / "disk" / "store"))
        started = time.monotonic()
        with pytest.raises(StorageDiskFull) as info:
            push(storage, tmp_path / "local", "base_data", SyncState(tmp_path / "scratch"), workers=4, log=quiet)
        assert time.monotonic() - started < AT_ONCE_SEC
        assert "No space left" in info.value.message and "Free space" in info.value.message
        assert "credentials" not in info.value.message
        assert_nothing_torn(tmp_path / "disk", whole)
        landed = storage.find("base_data")
        assert 0 < len(landed) < len(whole), "the disk should hold some shards, not all"

        resize(4096)
        push(storage, tmp_path / "local", "base_data", SyncState(tmp_path / "scratch"), workers=4, log=quiet)
        assert {name: size for name, (size, _) in storage.find("base_data").items()} == whole
        assert_nothing_torn(tmp_path / "disk", whole)


@needs_root
def test_a_full_scratch_disk_during_staging_names_scratch_and_keeps_no_partial_file(tmp_path, monkeypatch):
    whole = make_files(tmp_path / "store" / "base_data", 6, 100)
    storage = open_storage(str(tmp_path / "store"))
    with small_disk(tmp_path / "scratch", 1024):
        local = tmp_path / "scratch" / "base_data"
        checked = transfer._check_disk

        def check_then_fill(folder, need):
            """Room for everything when staging starts; then another process takes most of the disk."""
            checked(folder, need)
            (tmp_path / "scratch" / "other-job.bin").write_bytes(b"\0" * 700 * 1024)

        monkeypatch.setattr(transfer, "_check_disk", check_then_fill)
        with pytest.raises(StorageDiskFull) as info:
            pull(storage, "base_data", local, SyncState(tmp_path / "scratch"), workers=3, log=quiet)
        assert str(tmp_path / "scratch") in info.value.message and "--scratch" in info.value.message
        assert_nothing_torn(tmp_path / "scratch", whole)
        (tmp_path / "scratch" / "other-job.bin").unlink()
        monkeypatch.setattr(transfer, "_check_disk", checked)
        pull(storage, "base_data", local, SyncState(tmp_path / "scratch"), workers=3, log=quiet)
        assert {p.name: p.stat().st_size for p in local.iterdir()} == whole


def test_what_a_killed_writer_left_is_removed_by_the_next_write_of_the_same_file(tmp_path):
    folder = tmp_path / "storage" / "base_data"
    dead = folder / "shard_00000.parquet.0badc0de.part"  # a landing folder whose process was killed
    (dead).mkdir(parents=True)
    (dead / "shard_00000.parquet").write_bytes(b"half a shard")
    older = folder / "shard_00000.parquet.deadbeef.part"  # a temporary file as older versions wrote them
    older.write_bytes(b"half a shard")
    other = folder / "shard_00001.parquet.0badc0de.part"  # another file's: left for that file's next write
    other.mkdir()
    live = folder / "shard_00000.parquet.12345678.part"  # written right now by a live process
    live.mkdir()
    (live / "shard_00000.parquet").write_bytes(b"still arriving")
    hours_ago = time.time() - 2 * 3600
    for path in (dead / "shard_00000.parquet", dead, older, other):
        os.utime(path, (hours_ago, hours_ago))

    storage = open_storage(str(tmp_path / "storage"))
    assert storage.find("base_data") == {}, "a leftover was listed as a file"
    storage.write_bytes("base_data/shard_00000.parquet", b"a whole shard")
    assert not dead.exists() and not older.exists()
    assert other.exists() and (live / "shard_00000.parquet").read_bytes() == b"still arriving"
    assert sorted(storage.find("base_data")) == ["shard_00000.parquet"]


@needs_root
def test_a_full_scratch_while_the_copy_state_is_saved_names_scratch_not_the_storage(tmp_path):
    """The checkpoint uploader saves its copy state in scratch: when scratch is full, the error says scratch, exits
    as a full disk (6), and leaves no temporary state file."""
    from runner.storage_errors import explain_storage_error

    with small_disk(tmp_path / "scratch", 64):
        state = SyncState(tmp_path / "scratch")
        (tmp_path / "scratch" / "filler").write_bytes(b"\0" * 60 * 1024)
        state.entries = {f"base_checkpoints/d4/optim_{i:06d}_rank0.pt": [1, 2, "tag"] for i in range(1000)}
        with pytest.raises(OSError) as info:
            state.save()
        error = explain_storage_error(str(tmp_path / "storage"), info.value)
        assert isinstance(error, StorageDiskFull) and error.exit_code == 6
        assert str(tmp_path / "scratch") in error.message and str(tmp_path / "storage") not in error.message, error.message
        assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == ["filler"]


@needs_root
def test_node_run_on_a_full_storage_disk_stops_with_the_fix_and_the_rerun_after_freeing_space_trains(tmp_path):
    """The scenario of the report: staging fills the storage disk, space is freed, the same command runs again."""
    with small_disk(tmp_path / "disk", 72) as resize:
        storage_dir = tmp_path / "disk" / "store"
        preseed_files(storage_dir)
        double, env = make_double(tmp_path), base_env(tmp_path)
        first = node_run(str(storage_dir), double, env, "--only", "data")
        assert first.code != 0, first.output
        assert "No space left" in first.output and "Traceback" not in first.output, first.output[-3000:]
        shards = storage_dir / "base_data"
        for shard in shards.iterdir() if shards.exists() else []:
            assert shard.suffix == ".parquet" and shard.stat().st_size > 4096, f"a torn shard in storage: {shard}"
        resize(8192)
        again = node_run(str(storage_dir), double, env)
        assert again.code == 0, again.output[-3000:]
        assert sorted(p.name for p in shards.iterdir()) == [f"shard_{i:05d}.parquet" for i in range(4)]


@needs_root
def test_an_unwritable_checkpoint_folder_is_caught_by_the_storage_probe(tmp_path):
    folder = tmp_path / "store" / "base_checkpoints" / "d4"
    folder.mkdir(parents=True)
    with unwritable(folder):
        with pytest.raises(StoragePermissionDenied) as info:
            open_storage(str(tmp_path / "store"))
    assert str(folder) in info.value.message and "chown/chmod" in info.value.message
    assert "AWS_ACCESS_KEY_ID" not in info.value.message and "credentials" not in info.value.message


@needs_root
def test_a_local_permission_error_during_upload_fails_at_once_with_its_cause(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "model_000005.pt").write_bytes(b"x" * 1000)
    storage = open_storage(str(tmp_path / "store"))
    folder = tmp_path / "store" / "base_checkpoints"
    folder.mkdir()
    with unwritable(folder):
        started = time.monotonic()
        with pytest.raises(StoragePermissionDenied) as info:
            push(storage, tmp_path / "local", "base_checkpoints/d4", SyncState(tmp_path / "scratch"), log=quiet)
        assert time.monotonic() - started < AT_ONCE_SEC
    assert "Permission denied" in info.value.message or "not permitted" in info.value.message
    assert "AWS_ACCESS_KEY_ID" not in info.value.message and "refused the credentials" not in info.value.message


@needs_root
def test_the_checkpoint_uploader_gives_up_at_once_on_a_permission_error(tmp_path):
    """After training, the last checkpoints were retried for 30 minutes into a folder that refused them."""
    local = tmp_path / "scratch" / "d4"
    local.mkdir(parents=True)
    for name in ("model_000005.pt", "optim_000005_rank0.pt"):
        with zipfile.ZipFile(local / name, "w") as zf:
            zf.writestr("data", b"x" * 100)
    (local / "meta_000005.json").write_text("{}")
    storage = open_storage(str(tmp_path / "store"))
    folder = tmp_path / "store" / "base_checkpoints" / "d4"
    folder.mkdir(parents=True)
    uploader = CheckpointUploader(storage, local, "base_checkpoints/d4", 1, SyncState(tmp_path / "scratch"), log=quiet)
    with unwritable(folder):
        started = time.monotonic()
        with pytest.raises(StoragePermissionDenied) as info:
            uploader.finish()
        assert time.monotonic() - started < AT_ONCE_SEC
    assert str(folder) in info.value.message and "credentials" not in info.value.message


@needs_root
def test_node_run_refuses_an_unwritable_checkpoint_folder_before_training(tmp_path):
    storage_dir = tmp_path / "store"
    preseed_files(storage_dir)
    (storage_dir / "base_checkpoints").mkdir()
    double, env = make_double(tmp_path), base_env(tmp_path)
    with unwritable(storage_dir / "base_checkpoints"):
        result = node_run(str(storage_dir), double, env)
    assert result.code != 0
    assert "cannot write into" in result.output and str(storage_dir / "base_checkpoints") in result.output
    assert "AWS_ACCESS_KEY_ID" not in result.output and "Traceback" not in result.output
    assert not read_calls(tmp_path / "calls.jsonl"), "nothing may run before the probe passed"


@needs_root
def test_a_local_permission_error_on_the_storage_folder_is_not_reported_as_credentials(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    with unwritable(parent):
        result = runner(["node", "run", "--storage", str(parent / "store"), "--model", "smoke", "--nanochat-dir",
                         str(make_double(tmp_path)), "--python", sys.executable, "--run-id", "perm"], base_env(tmp_path))
    assert result.code != 0
    assert "Operation not permitted" in result.output and str(parent / "store") in result.output
    assert "credentials" not in result.output and "AWS_ACCESS_KEY_ID" not in result.output


def test_an_s3_key_that_may_only_read_fails_the_upload_at_once(s3_bucket, tmp_path, monkeypatch):
    """AccessDenied (403) is not transient: no retries, and the message is about access, not a dead server."""
    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "model_000005.pt").write_bytes(b"x" * 1000)
    reader = [f"key={READER_KEY}", f"secret={READER_SECRET}"]  # as options: fsspec reuses a filesystem made from the env
    storage = open_storage(s3_bucket.url, reader, check=False)
    started = time.monotonic()
    with pytest.raises(StoragePermissionDenied) as info:
        push(storage, tmp_path / "local", "base_checkpoints/d4", SyncState(tmp_path / "scratch"), log=quiet)
    assert time.monotonic() - started < AT_ONCE_SEC
    assert "denied access" in info.value.message and "list, read and write" in info.value.message
    with pytest.raises(StoragePermissionDenied):
        open_storage(s3_bucket.url, reader)  # the probe writes too, so it catches the key before a run


def test_an_s3_endpoint_that_never_answers_is_reported_and_given_up_within_the_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUNNER_STORAGE_TIMEOUT_SEC", "6")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with SilentServer() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        started = time.monotonic()
        with pytest.raises(StorageNotAnswering) as info:
            open_storage("s3://silent/run")
        waited = time.monotonic() - started
        assert server.accepted >= 1, "the call never reached the silent server"
    assert waited < 6 + 10
    assert "gave no answer for" in info.value.message and "RUNNER_STORAGE_TIMEOUT_SEC" in info.value.message
    assert "storage not answering for" in capsys.readouterr().err


def test_node_run_against_a_silent_s3_endpoint_ends_with_a_clear_error(tmp_path):
    with SilentServer() as server:
        env = base_env(tmp_path, {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                  "RUNNER_STORAGE_TIMEOUT_SEC": "6"})
        started = time.monotonic()
        result = node_run("s3://silent/run", make_double(tmp_path), env)
        waited = time.monotonic() - started
    assert result.code != 0
    assert "storage not answering for" in result.output and "gave no answer" in result.output, result.output
    assert "Traceback" not in result.output
    assert waited < 60, f"took {waited:.0f} s"


def test_runner_ls_against_a_silent_s3_endpoint_says_what_it_waits_for(tmp_path):
    with SilentServer() as server:
        env = base_env(tmp_path, {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                  "RUNNER_STORAGE_TIMEOUT_SEC": "5"})
        result = runner(["ls", "s3://silent/x"], env)
    assert result.code == 1 and "Traceback" not in result.output
    assert "storage not answering for" in result.output and "listing s3://silent/x" in result.output
    assert "gave no answer for 5 s" in result.output
