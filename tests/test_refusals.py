"""What the node agent and the recipe loader refuse before anything is written: bad run ids, plans with flags the pin
lacks (from a file or RUNNER_PLAN_JSON), recipes by path, malformed recipe files, a scratch disk too small, --fresh
without a phase. Each is a message with a fix, never a traceback, and nothing lands in storage or scratch."""

from __future__ import annotations

import json
import subprocess

import pytest
from harness import base_env, make_double, runner
from runner import recipe_schema
from runner.recipes import RECIPE_DIR


def node(tmp_path, *extra, env_extra=None):
    double = tmp_path / "nanochat-seed" if (tmp_path / "nanochat-seed").exists() else make_double(tmp_path)
    return runner(["node", "run", "--storage", str(tmp_path / "storage"), "--nanochat-dir", str(double), "--python", "python3", *extra],
                  base_env(tmp_path, env_extra))


@pytest.mark.parametrize("run_id", ["../../x", "a/b", "x" * 300, "line\nbreak", ".hidden"])
def test_run_ids_that_cannot_name_a_folder_are_refused(tmp_path, run_id):
    result = node(tmp_path, "--model", "smoke", "--run-id", run_id)
    assert result.code == 1 and "cannot name a folder in storage" in result.output and "To fix:" in result.output
    assert not (tmp_path / "storage").exists() and not (tmp_path / "x").exists()


def test_a_plan_file_with_a_flag_the_pin_lacks_is_refused_before_any_phase(tmp_path):
    plan = json.loads(runner(["plan", "--model", "smoke", "--json"], base_env(tmp_path)).output)
    plan["phases"][2]["steps"][0]["args"].append("--no_such_flag=1")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for extra, env in ((["--plan", str(tmp_path / "plan.json")], None), ([], {"RUNNER_PLAN_JSON": json.dumps(plan)})):
        result = node(tmp_path, *extra, env_extra=env)
        assert result.code == 1, result.output
        assert "scripts.base_train has no option --no_such_flag" in result.output
        assert not (tmp_path / "storage").exists()  # data and tokenizer never ran


def test_fresh_needs_a_phase_and_the_heartbeat_must_be_positive(tmp_path):
    assert "--fresh applies to the phases --from or --only select" in node(tmp_path, "--model", "smoke", "--fresh").output
    result = node(tmp_path, "--model", "smoke", "--heartbeat-sec", "-1")
    assert result.code == 2 and "--heartbeat-sec" in result.output


def test_recipes_are_names_not_paths(tmp_path):
    outside = tmp_path / "evil.toml"
    outside.write_text((RECIPE_DIR / "seed.toml").read_text())
    result = runner(["plan", "--recipe", str(tmp_path / "evil")], base_env(tmp_path))
    assert result.code == 1 and "Unknown recipe" in result.output and "Traceback" not in result.output


def test_a_recipe_with_an_unknown_key_or_value_is_named():
    import tomllib

    recipe = tomllib.loads((RECIPE_DIR / "seed.toml").read_text())
    assert recipe_schema.check(recipe) == []
    recipe["phase"][2]["step"][0]["resum_flag"] = "--x"
    recipe["phase"][2]["step"][1]["critical"] = "no"
    recipe["phase"][0]["hardware"] = "tpu"
    recipe["placeholders"]["runtime"].remove("save_every")
    problems = "\n".join(recipe_schema.check(recipe))
    assert "phase[2] (base).step[0] (base_train).resum_flag is not a recipe key" in problems
    assert "step[1] (base_loss).critical = 'no' has the wrong type" in problems
    assert "phase[0] (data).hardware = 'tpu' is not one of 'cpu', 'gpu'" in problems
    assert "placeholder {save_every} is used but not declared" in problems


def test_a_scratch_disk_too_small_is_refused_before_staging(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        result = node(tmp_path, "--model", "d12", "--gpus", "1", "--scratch", str(mount))
        assert result.code == 6, result.output
        assert "Scratch" in result.output and "GB of shards" in result.output and "--scratch" in result.output
        assert "Traceback" not in result.output
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_relative_scratch_is_made_absolute(tmp_path):
    import sys

    from harness import REPO, preseed_files

    preseed_files(tmp_path / "storage")
    double = make_double(tmp_path)
    env = base_env(tmp_path)
    env.pop("RUNNER_SCRATCH")
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "node", "run", "--storage", str(tmp_path / "storage"), "--model", "smoke",
                           "--nanochat-dir", str(double), "--python", sys.executable, "--scratch", "rel-scratch", "--only", "data"],
                          cwd=str(tmp_path), env={**env, "PYTHONPATH": env["PYTHONPATH"]}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"scratch {tmp_path / 'rel-scratch'}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "rel-scratch/base/base_data").iterdir())[:1] == ["shard_00000.parquet"]
    assert not (double / "rel-scratch").exists() and not (REPO / "rel-scratch").exists()
