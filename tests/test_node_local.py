"""The node agent end to end against a local storage folder, driving the nanochat test double."""

from __future__ import annotations

import json

import pytest

from harness import base_env, make_double, node_run, preseed_files, read_calls

SEED_SMOKE_SCRIPTS = [
    "nanochat.report", "nanochat.dataset", "scripts.tok_train", "scripts.tok_eval", "scripts.base_train",
    "scripts.base_loss", "scripts.base_eval", "scripts.mid_train", "scripts.chat_eval", "scripts.chat_sft",
    "scripts.chat_eval", "nanochat.report",
]


@pytest.fixture
def setup(tmp_path):
    """(storage dir with every pre-seed item, a double checkout, the environment)."""
    storage = tmp_path / "storage"
    preseed_files(storage)
    return storage, make_double(tmp_path), base_env(tmp_path)


def normalized(calls: list[dict]) -> list[str]:
    return [c["module"] for c in calls]


def test_smoke_plan_end_to_end_then_rerun_skips_everything(setup, tmp_path):
    storage, double, env = setup
    first = node_run(str(storage), double, env)
    assert first.code == 0, first.output
    assert normalized(read_calls(tmp_path / "calls.jsonl")) == SEED_SMOKE_SCRIPTS
    # Every artifact is in storage under nanochat's own names.
    assert sorted(p.name for p in (storage / "base_data").iterdir()) == [f"shard_{i:05d}.parquet" for i in range(4)]
    assert (storage / "tokenizer" / "tokenizer.pkl").is_file()
    base = storage / "base_checkpoints" / "d4"
    assert {"model_000020.pt", "meta_000020.json", "optim_000020_rank0.pt", "model_000010.pt"} <= {p.name for p in base.iterdir()}
    assert any((storage / "mid_checkpoints" / "d4").glob("model_*.pt"))
    assert any((storage / "chatsft_checkpoints" / "d4").glob("model_*.pt"))
    assert (storage / "report" / "report.md").read_text().strip()
    status = json.loads((storage / "_runner/runs/test-run/status.json").read_text())
    assert status["state"] == "succeeded"
    assert status["phases"]["base"]["steps"]["base_train"]["progress"]["step"] == 19  # the last progress line
    assert status["phases"]["base"]["steps"]["base_train"]["progress"]["tok_per_sec"] > 0
    assert (storage / "_runner/runs/test-run/logs/base.log").read_text().count("step 000") >= 20
    assert len(list((storage / "_runner/markers").rglob("*.json"))) == 6

    (tmp_path / "calls.jsonl").unlink()
    again = node_run(str(storage), double, env)
    assert again.code == 0, again.output
    assert read_calls(tmp_path / "calls.jsonl") == []
    assert again.output.count("skipping") == 6
    assert json.loads((storage / "_runner/runs/test-run/status.json").read_text())["attempts"] == 2


def test_every_phase_gets_the_node_environment(setup, tmp_path):
    storage, double, env = setup
    assert node_run(str(storage), double, env, "--only", "data").code == 0
    assert node_run(str(storage), double, env, "--only", "tokenizer").code == 0
    calls = read_calls(tmp_path / "calls.jsonl")
    scratch = tmp_path / "scratch"
    for call in calls:
        assert call["env"]["NANOCHAT_BASE_DIR"] == str(scratch / "base")
        assert call["env"]["OMP_NUM_THREADS"] == "1"
        assert call["env"]["TORCHINDUCTOR_CACHE_DIR"].startswith(str(scratch))
        assert call["env"]["TRITON_CACHE_DIR"].startswith(str(scratch))
        assert call["env"]["WANDB_MODE"] == "disabled"  # no WANDB_API_KEY in the environment
        assert call["cwd"] == str(double)
    tok_eval = next(c for c in calls if c["script"].endswith("tok_eval"))
    assert tok_eval["env"]["TIKTOKEN_CACHE_DIR"] == str(scratch / "cache" / "tiktoken")


def test_from_only_and_force_choose_what_runs(setup, tmp_path):
    storage, double, env = setup
    assert node_run(str(storage), double, env).code == 0
    calls = tmp_path / "calls.jsonl"

    calls.unlink()
    result = node_run(str(storage), double, env, "--from", "sft")
    assert result.code == 0, result.output
    assert normalized(read_calls(calls)) == ["scripts.chat_sft", "scripts.chat_eval", "nanochat.report"]

    calls.unlink()
    result = node_run(str(storage), double, env, "--only", "tokenizer")
    assert result.code == 0, result.output
    assert normalized(read_calls(calls)) == ["scripts.tok_train", "scripts.tok_eval"]

    calls.unlink()
    result = node_run(str(storage), double, env, "--force")
    assert result.code == 0, result.output
    # Forced: every phase runs; the shards are all in storage, so the downloader itself is not started.
    assert normalized(read_calls(calls)) == [s for s in SEED_SMOKE_SCRIPTS if s != "nanochat.dataset"]


def test_a_failing_phase_stops_the_run_and_a_rerun_continues_from_it(setup, tmp_path):
    storage, double, env = setup
    failing = dict(env, NANOCHAT_DOUBLE_FAIL="base_train")
    result = node_run(str(storage), double, failing)
    assert result.code == 4
    assert "Phase base failed: step base_train exited non-zero" in result.output
    assert "_runner/runs/test-run/logs/base.log" in result.output
    assert "Traceback" in (storage / "_runner/runs/test-run/logs/base.log").read_text()  # nanochat's, in the log
    assert "scripts.mid_train" not in normalized(read_calls(tmp_path / "calls.jsonl"))
    status = json.loads((storage / "_runner/runs/test-run/status.json").read_text())
    assert status["state"] == "failed" and status["phases"]["base"]["state"] == "failed"

    (tmp_path / "calls.jsonl").unlink()
    result = node_run(str(storage), double, env)
    assert result.code == 0, result.output
    ran = normalized(read_calls(tmp_path / "calls.jsonl"))
    assert ran[0] == "scripts.base_train" and "scripts.tok_train" not in ran


def test_a_failing_evaluation_does_not_stop_the_run_and_is_retried_alone(setup, tmp_path):
    storage, double, env = setup
    result = node_run(str(storage), double, dict(env, NANOCHAT_DOUBLE_FAIL="base_eval"))
    assert result.code == 3, result.output
    assert "evaluation failed: base.base_eval" in result.output
    assert (storage / "chatsft_checkpoints" / "d4").is_dir()  # the pipeline went on
    status = json.loads((storage / "_runner/runs/test-run/status.json").read_text())
    assert status["state"] == "succeeded_with_eval_failures"
    assert status["eval_failures"] == ["base.base_eval (exit 1)"]

    (tmp_path / "calls.jsonl").unlink()
    result = node_run(str(storage), double, env)
    assert result.code == 0, result.output
    assert normalized(read_calls(tmp_path / "calls.jsonl")) == ["scripts.base_eval"]


def test_missing_shards_are_caught_although_the_downloader_exits_0(setup, tmp_path):
    storage, double, env = setup
    result = node_run(str(storage), double, dict(env, NANOCHAT_DOUBLE_SHARD_FAILURES="1"), "--only", "data")
    assert result.code == 4
    assert "1 of 4 shards are missing" in result.output
    assert not list((storage / "_runner" / "markers").glob("data/*.json"))


def test_shards_already_in_storage_mean_no_download(setup, tmp_path):
    storage, double, env = setup
    assert node_run(str(storage), double, env, "--only", "data").code == 0
    (tmp_path / "calls.jsonl").unlink()
    result = node_run(str(storage), double, env, "--only", "data")  # --only forces the phase
    assert result.code == 0
    assert "nanochat.dataset" not in normalized(read_calls(tmp_path / "calls.jsonl"))
    assert "all 4 shards are already here" in result.output


def test_heartbeat_in_silence(setup, tmp_path):
    storage, double, env = setup
    assert node_run(str(storage), double, env, "--only", "data").code == 0
    quiet = dict(env, NANOCHAT_DOUBLE_HANG="tok_train", NANOCHAT_DOUBLE_HANG_SEC="4")
    args = ["--only", "tokenizer", "--heartbeat-sec", "1"]
    result = node_run(str(storage), double, quiet, *args)
    assert result.code == 0, result.output
    assert "tokenizer/tok_train: still running, no output for" in result.output


def test_commit_mismatch_is_refused_before_anything_runs(setup, tmp_path):
    storage, double, env = setup
    (double / ".nanochat-commit").write_text("92d63d4e8bb4df75c3b71618f31ddde2378b2bcd\n")
    result = node_run(str(storage), double, env)
    assert result.code == 1
    assert "is commit 92d63d4, but recipe 'seed' is pinned to a1ccb3d" in result.output
    assert "Traceback" not in result.output
    assert read_calls(tmp_path / "calls.jsonl") == []


def test_latest_recipe_smoke_end_to_end(tmp_path):
    storage = tmp_path / "storage"
    preseed_files(storage, recipe="latest")
    double = make_double(tmp_path, "latest")
    env = base_env(tmp_path)
    result = node_run(str(storage), double, env, recipe="latest")
    assert result.code == 0, result.output
    assert normalized(read_calls(tmp_path / "calls.jsonl")) == [
        "nanochat.dataset", "scripts.tok_train", "scripts.tok_eval", "scripts.base_train", "scripts.base_eval",
        "scripts.chat_sft", "scripts.chat_eval",
    ]
    names = sorted(p.name for p in (storage / "base_data_climbmix").iterdir())
    assert names == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet", "shard_06542.parquet"]
    assert any((storage / "chatsft_checkpoints" / "d4").glob("optim_*_rank0.pt"))
