"""`runner sync`: incremental, checksum-aware, loud on errors, deleting only on request; local dirs and S3."""

from __future__ import annotations

import os

import fsspec
import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.errors import TransferError
from runner.storage import open_storage
from runner.sync import sync


def quiet(*_):
    pass


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_local_to_s3_and_back_is_incremental_and_checksum_aware(tmp_path, s3_bucket, s3_env):
    src = tmp_path / "run"
    make_tree(src, {"tokenizer/tokenizer.pkl": b"a" * 100, "base_data/shard_00000.parquet": os.urandom(12 * 1024 * 1024),
                    "_runner/markers/base/k.json": b"{}"})
    local, remote = open_storage(str(src)), open_storage(s3_bucket.url)
    first = sync(local, remote, log=quiet)
    assert sorted(first.copied) == ["_runner/markers/base/k.json", "base_data/shard_00000.parquet", "tokenizer/tokenizer.pkl"]
    assert sync(local, remote, log=quiet).copied == []  # nothing changed

    (src / "tokenizer/tokenizer.pkl").write_bytes(b"b" * 100)  # same size, new content
    assert sync(local, remote, log=quiet).copied == ["tokenizer/tokenizer.pkl"]

    back = open_storage(str(tmp_path / "back"))
    assert len(sync(remote, back, log=quiet).copied) == 3
    assert (tmp_path / "back/base_data/shard_00000.parquet").read_bytes() == (src / "base_data/shard_00000.parquet").read_bytes()
    assert sync(remote, back, log=quiet).copied == []


def test_a_multipart_etag_is_matched_without_copying_again(tmp_path, s3_bucket, s3_env):
    data = os.urandom(11 * 1024 * 1024)
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    with fs.open(f"{s3_bucket.url[5:]}/big.bin", "wb", block_size=5 * 1024 * 1024) as f:  # a multipart upload
        f.write(data)
    assert "-" in fs.info(f"{s3_bucket.url[5:]}/big.bin")["ETag"]
    make_tree(tmp_path / "local", {"big.bin": data})
    result = sync(open_storage(str(tmp_path / "local")), open_storage(s3_bucket.url), log=quiet)
    assert result.copied == [] and result.identical == 1


def test_delete_only_when_asked(tmp_path):
    make_tree(tmp_path / "a", {"keep.txt": b"1"})
    make_tree(tmp_path / "b", {"keep.txt": b"1", "extra.txt": b"2"})
    a, b = open_storage(str(tmp_path / "a")), open_storage(str(tmp_path / "b"))
    assert sync(a, b, log=quiet).deleted == [] and (tmp_path / "b/extra.txt").exists()
    assert sync(a, b, delete=True, log=quiet).deleted == ["extra.txt"] and not (tmp_path / "b/extra.txt").exists()


def test_failures_are_raised_not_swallowed(tmp_path):
    make_tree(tmp_path / "a", {"one.txt": b"1", "two.txt": b"22"})
    make_tree(tmp_path / "b", {"two.txt/in-the-way": b"a folder where the file should land"})
    a, b = open_storage(str(tmp_path / "a")), open_storage(str(tmp_path / "b"))
    with pytest.raises(TransferError, match="1 of 2 files failed") as info:
        sync(a, b, log=quiet)
    assert "two.txt: IsADirectoryError" in info.value.message, info.value.message
    assert (tmp_path / "b/one.txt").read_bytes() == b"1" and (tmp_path / "b/two.txt").is_dir()
    assert not [p for p in (tmp_path / "b").rglob("*") if p.name.endswith(".part")], "a landing folder was left"


def test_cli_dry_run_and_summary(tmp_path):
    make_tree(tmp_path / "a", {"x/y.txt": b"hello"})
    runner = CliRunner()
    dry = runner.invoke(main, ["sync", str(tmp_path / "a"), str(tmp_path / "b"), "--dry-run"])
    assert dry.exit_code == 0 and "copy   x/y.txt" in dry.output and not (tmp_path / "b/x").exists()
    real = runner.invoke(main, ["sync", str(tmp_path / "a"), str(tmp_path / "b")])
    assert real.exit_code == 0 and "copied 1 file(s)" in real.output
    empty = runner.invoke(main, ["sync", str(tmp_path / "nothing"), str(tmp_path / "b")])
    assert empty.exit_code == 1 and "holds no files" in empty.output
