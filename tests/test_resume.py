"""Resume rules on local storage: a crash keeps its checkpoints, a corrupt one is skipped, a different GPU count
is refused, --only/--from resume unless --fresh starts over, and later phases stage only the newest complete checkpoint."""

from __future__ import annotations

import sys

from harness import base_env, make_double, preseed_files, read_calls, runner, smoke_plan
from runner.checkpoints import stored_checkpoints
from runner.storage import open_storage


def run(plan, storage, double, env, *extra):
    return runner(["node", "run", "--plan", str(plan), "--storage", str(storage), "--nanochat-dir", str(double),
                   "--python", sys.executable, "--run-id", "r", *extra], env)


def crashed_at_step_17(tmp_path):
    """A run whose base_train crashed at step 17 with checkpoints every 5 steps."""
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    plan = smoke_plan(tmp_path, iterations=30, save_every=5)
    crash = base_env(tmp_path, {"NANOCHAT_DOUBLE_FAIL_AT_STEP": "17"})
    result = run(plan, storage, double, crash)
    assert result.code == 4 and "Phase base failed" in result.output
    return storage, double, plan


def test_a_crash_keeps_its_complete_checkpoints_and_the_rerun_resumes(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    assert set(stored_checkpoints(open_storage(str(storage)), "base_checkpoints/d4").complete) == {5, 10, 15}
    result = run(plan, storage, double, base_env(tmp_path))
    assert result.code == 0, result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
    assert "--resume_from_step=15" in train["argv"]


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    model = storage / "base_checkpoints/d4/model_000015.pt"
    model.write_bytes(b"\0" * model.stat().st_size)  # same size, wrong bytes: only the checksum can tell
    result = run(plan, storage, double, base_env(tmp_path, {"RUNNER_SCRATCH": str(tmp_path / "fresh-scratch")}))
    assert result.code == 0, result.output
    assert "checkpoint step 15 of base_checkpoints/d4 does not match its manifest" in result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
    assert "--resume_from_step=10" in train["argv"]


def test_a_different_gpu_count_is_refused_with_what_to_do(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    result = runner(["node", "run", "--storage", str(storage), "--model", "smoke", "--gpus", "2", "--device", "cuda", "--nanochat-dir", str(double),
                     "--python", sys.executable, "--run-id", "r"], base_env(tmp_path))
    # The smoke plan at 2 GPUs has other commands, so its base marker differs and base would run: it must refuse.
    assert result.code == 1
    assert "was written by 1 processes, but this plan runs 2" in result.output and "--gpus 1" in result.output
    assert "Traceback" not in result.output


def test_only_and_from_rerun_an_interrupted_phase_by_resuming_it(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    result = run(plan, storage, double, base_env(tmp_path), "--only", "base")
    assert result.code == 0, result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
    assert "--resume_from_step=15" in train["argv"] and "starting fresh" not in result.output


def test_fresh_starts_base_training_over(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    result = run(plan, storage, double, base_env(tmp_path), "--from", "base", "--fresh")
    assert result.code == 0, result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
    assert not any(a.startswith("--resume_from_step") for a in train["argv"])
    assert "starting fresh; unsealed 3 earlier checkpoint(s)" in result.output
    assert set(stored_checkpoints(open_storage(str(storage)), "base_checkpoints/d4").complete) == {5, 10, 15, 20, 25, 30}


def test_later_phases_stage_only_the_newest_complete_checkpoint(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    assert run(plan, storage, double, base_env(tmp_path)).code == 0
    fresh = base_env(tmp_path, {"RUNNER_SCRATCH": str(tmp_path / "node-2")})
    # A torn checkpoint newer than the last complete one must not be what mid-training loads.
    (storage / "base_checkpoints/d4/model_000035.pt").write_bytes(b"torn")
    result = run(plan, storage, double, fresh, "--only", "mid")
    assert result.code == 0, result.output
    staged = sorted(p.name for p in (tmp_path / "node-2/base/base_checkpoints/d4").iterdir())
    assert staged == ["meta_000030.json", "model_000030.pt", "optim_000030_rank0.pt"]
    assert "ignoring checkpoint step 35 of base_checkpoints/d4: no manifest" in result.output


def test_a_manifest_of_null_or_of_nothing_counts_as_incomplete_and_the_rerun_resumes_before_it(tmp_path):
    storage, double, plan = crashed_at_step_17(tmp_path)
    (storage / "base_checkpoints/d4/manifest_000015.json").write_text("null")
    (storage / "base_checkpoints/d4/manifest_000010.json").write_text("{}")
    stored = stored_checkpoints(open_storage(str(storage)), "base_checkpoints/d4")
    assert set(stored.complete) == {5}
    assert stored.incomplete[15] == "its manifest is not a JSON object (NoneType)" and stored.incomplete[10] == "its manifest has no process count"
    result = run(plan, storage, double, base_env(tmp_path))
    assert result.code == 0 and "Traceback" not in result.output, result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"][-1]
    assert "--resume_from_step=5" in train["argv"]
