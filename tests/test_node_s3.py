"""The node agent against a real S3 server (SeaweedFS on 127.0.0.1), including wrong keys and a dead endpoint."""

from __future__ import annotations

import json

import fsspec

from harness import base_env, make_double, node_run, read_calls, seed_s3


def test_smoke_plan_end_to_end_on_s3_then_rerun_skips(s3_bucket, tmp_path):
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    double = make_double(tmp_path)
    env = base_env(tmp_path, s3_bucket.env)

    first = node_run(s3_bucket.url, double, env)
    assert first.code == 0, first.output
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    root = s3_bucket.url[5:]
    assert len(fs.glob(f"{root}/base_data/shard_*.parquet")) == 4
    assert fs.exists(f"{root}/tokenizer/tokenizer.pkl")
    for name in ("model_000020.pt", "meta_000020.json", "optim_000020_rank0.pt"):
        assert fs.exists(f"{root}/base_checkpoints/d4/{name}")
    assert fs.glob(f"{root}/chatsft_checkpoints/d4/model_*.pt")
    assert fs.cat(f"{root}/report/report.md").strip()
    status = json.loads(fs.cat(f"{root}/_runner/runs/test-run/status.json"))
    assert status["state"] == "succeeded"
    # Shards in storage have the sizes of the shards the downloader made on the node.
    scratch_shards = sorted((tmp_path / "scratch/base/base_data").glob("*.parquet"))
    assert [fs.info(f"{root}/base_data/{p.name}")["size"] for p in scratch_shards] == [p.stat().st_size for p in scratch_shards]

    (tmp_path / "calls.jsonl").unlink()
    again = node_run(s3_bucket.url, double, env)
    assert again.code == 0, again.output
    assert read_calls(tmp_path / "calls.jsonl") == []


def test_a_fresh_node_stages_everything_back_from_s3(s3_bucket, tmp_path):
    """Phases on a second machine (a new scratch) find their inputs in storage only."""
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    double = make_double(tmp_path)
    env = base_env(tmp_path, s3_bucket.env)
    assert node_run(s3_bucket.url, double, env, "--only", "data").code == 0
    assert node_run(s3_bucket.url, double, env, "--only", "tokenizer").code == 0
    other_node = base_env(tmp_path, dict(s3_bucket.env, RUNNER_SCRATCH=str(tmp_path / "scratch-2")))
    result = node_run(s3_bucket.url, double, other_node, "--only", "base")
    assert result.code == 0, result.output
    assert (tmp_path / "scratch-2/base/tokenizer/tokenizer.pkl").is_file()
    assert len(list((tmp_path / "scratch-2/base/base_data").glob("*.parquet"))) == 4


def test_wrong_s3_keys_fail_before_any_phase(s3_bucket, tmp_path):
    env = base_env(tmp_path, dict(s3_bucket.env, AWS_SECRET_ACCESS_KEY="wrong", AWS_ACCESS_KEY_ID="nobody"))
    result = node_run(s3_bucket.url, make_double(tmp_path), env)
    assert result.code == 1
    assert "refused the credentials" in result.output and "AWS_ACCESS_KEY_ID" in result.output
    assert "Traceback" not in result.output
    assert read_calls(tmp_path / "calls.jsonl") == []


def test_unreachable_endpoint_fails_fast_with_a_fix(stopped_s3_endpoint, tmp_path):
    env = base_env(tmp_path, {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret", "AWS_ENDPOINT_URL": stopped_s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"})
    result = node_run("s3://nobody-home/run", make_double(tmp_path), env)
    assert result.code == 1
    assert "Cannot reach the storage" in result.output and "AWS_ENDPOINT_URL" in result.output
    assert "Traceback" not in result.output


def test_missing_bucket_says_how_to_create_it(s3_server, tmp_path):
    env = base_env(tmp_path, s3_server.env())
    result = node_run("s3://no-such-bucket-here/run", make_double(tmp_path), env)
    assert result.code == 1
    assert "does not exist" in result.output and "s3 mb s3://no-such-bucket-here" in result.output
