"""Staging between storage and scratch: only what changed moves, every arrival is checked, errors are loud."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple

import pytest

from runner.errors import StorageError, TransferError
from runner.storage import open_storage
from runner.transfer import SyncState, pull, push


@pytest.fixture
def storage(request):
    store = open_storage(f"memory://{request.node.name}")
    yield store
    store.fs.rm(store.root, recursive=True)


def quiet(*_):
    pass


def test_push_then_pull_round_trip_and_skip_unchanged(storage, tmp_path):
    src = tmp_path / "node-a" / "tokenizer"
    src.mkdir(parents=True)
    (src / "tokenizer.pkl").write_bytes(b"x" * 1000)
    (src / "token_bytes.pt").write_bytes(b"y" * 10)
    state_a = SyncState(tmp_path / "node-a")
    stats = push(storage, src, "tokenizer", state_a, log=quiet)
    assert (stats.files, stats.bytes) == (2, 1010)
    assert push(storage, src, "tokenizer", state_a, log=quiet).files == 0  # nothing changed

    dst = tmp_path / "node-b" / "tokenizer"
    state_b = SyncState(tmp_path / "node-b")
    assert pull(storage, "tokenizer", dst, state_b, log=quiet).files == 2
    assert (dst / "tokenizer.pkl").read_bytes() == b"x" * 1000
    assert pull(storage, "tokenizer", dst, state_b, log=quiet).files == 0
    assert not list(dst.glob("*.part"))


def test_a_rewritten_file_of_the_same_size_is_pushed_again(storage, tmp_path):
    """A retrained tokenizer often has the very same size: comparing sizes alone would keep the old one."""
    src = tmp_path / "tokenizer"
    src.mkdir()
    (src / "tokenizer.pkl").write_bytes(b"old!")
    state = SyncState(tmp_path)
    push(storage, src, "tokenizer", state, log=quiet)
    os.utime(src / "tokenizer.pkl", ns=(1, 1))  # a different mtime, as a rewrite gives
    (src / "tokenizer.pkl").write_bytes(b"new!")
    assert push(storage, src, "tokenizer", state, log=quiet).files == 1
    assert storage.fs.cat(storage.path("tokenizer/tokenizer.pkl")) == b"new!"


def test_only_the_named_files_are_pulled(storage, tmp_path):
    for i in range(5):
        storage.fs.pipe_file(storage.path(f"base_data/shard_{i:05d}.parquet"), b"PAR1....PAR1")
    local = tmp_path / "base_data"
    pull(storage, "base_data", local, SyncState(tmp_path), log=quiet, only={"shard_00000.parquet", "shard_00001.parquet"})
    assert sorted(p.name for p in local.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]


def test_a_short_download_is_an_error_and_leaves_no_file(storage, tmp_path, monkeypatch):
    storage.fs.pipe_file(storage.path("base_data/shard_00000.parquet"), b"PAR1" * 100)

    def truncated_get(remote, local, **kwargs):
        with open(local, "wb") as f:
            f.write(b"PAR1")

    monkeypatch.setattr(storage.fs, "get_file", truncated_get)
    with pytest.raises(TransferError, match="arrived with 4 bytes, storage says 400"):
        pull(storage, "base_data", tmp_path / "base_data", SyncState(tmp_path), log=quiet)
    assert not list((tmp_path / "base_data").glob("*"))


def test_a_full_scratch_disk_is_refused_before_copying(storage, tmp_path, monkeypatch):
    storage.fs.pipe_file(storage.path("base_checkpoints/d20/model_000100.pt"), b"0" * 5000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    with pytest.raises(TransferError, match="has 0.0 GB free but 0.0 GB must be staged") as info:
        pull(storage, "base_checkpoints", tmp_path / "ckpt", SyncState(tmp_path), log=quiet)
    assert "--scratch" in info.value.message


def test_storage_errors_become_messages(storage, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")

    def refuse(*args, **kwargs):
        raise PermissionError("AccessDenied: Access Denied")

    monkeypatch.setattr(storage.fs, "put_file", refuse)
    with pytest.raises(StorageError, match="refused the credentials"):
        push(storage, tmp_path / "f", "f", SyncState(tmp_path), log=quiet)
