"""The CLI: plans, bad input answered with a fix (never a traceback), and a --help that loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from runner.cli import main

HEAVY = ["boto3", "botocore", "docker", "modal", "torch", "s3fs", "fsspec", "rich", "aiobotocore"]


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_help_imports_no_heavy_library():
    code = "import sys; from runner.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_plan_prints_phases_commands_and_costs():
    result = invoke("plan", "--model", "d20", "--gpus", "8")
    assert result.exit_code == 0, result.output
    for text in ("base_train", "torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=20",
                 "--target_param_data_ratio=20", "--device_batch_size=16", "$ modal", "Assumptions", "MFU 40%"):
        assert text in result.output


def test_plan_json_is_the_node_input(tmp_path):
    result = invoke("plan", "--model", "d12", "--gpus", "2", "--with-rl", "--json")
    plan = json.loads(result.output)
    assert plan["gpus"] == 2 and plan["depth"] == 12 and plan["phases"][-2]["name"] == "rl"
    assert plan["wandb_run"] == "dummy"
    keyed = json.loads(invoke("plan", "--json", env={"WANDB_API_KEY": "k"}).output)
    assert keyed["wandb_run"] == keyed["run_id"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--gpus", "3"], "--gpus 3 is not supported"),
        (["plan", "--recipe", "nightly"], "Unknown recipe 'nightly'"),
        (["plan", "--model", "d99"], "Unknown model 'd99'"),
        (["plan", "--model", "d20", "--depth", "12"], "either --model or --depth"),
        (["node", "run", "--storage", "s3://", "--model", "smoke"], "does not name a valid S3 bucket"),
        (["node", "run", "--storage", "s3://Bad_Bucket/x", "--model", "smoke"], "does not name a valid S3 bucket"),
        (["node", "run", "--storage", "ftp://host/x", "--model", "smoke"], "protocol 'ftp' is not supported"),
        (["node", "run", "--storage", "s3:/bucket/x", "--model", "smoke"], "is malformed"),
        (["node", "run", "--storage", "/tmp/x", "--storage-option", "endpoint", "--model", "smoke"], "is not KEY=VALUE"),
        (["node", "run", "--storage", "s3://b-1/x", "--storage-option", "endpoint_url=localhost:9", "--model", "smoke"], "is not an http(s) URL"),
        (["node", "run", "--storage", "/tmp/x", "--model", "smoke", "--only", "nope"], "Unknown phase 'nope'"),
        (["node", "run", "--storage", "/tmp/x", "--model", "smoke", "--from", "rl"], "Add --with-rl"),
        (["node", "run", "--storage", "/tmp/x", "--model", "smoke", "--from", "base", "--only", "sft"], "cannot be combined"),
        (["node", "run", "--storage", "/tmp/x", "--plan", "/no/such/plan.json"], "No plan file"),
    ],
)
def test_bad_input_is_a_message_with_a_fix(args, message, tmp_path):
    result = invoke(*args, env={"NANOCHAT_DIR": str(tmp_path / "nowhere")})
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "To fix:" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_missing_nanochat_checkout_says_where_to_get_it(tmp_path):
    result = invoke("node", "run", "--storage", str(tmp_path / "s"), "--model", "smoke", "--nanochat-dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert "is not a nanochat checkout" in result.output and "git clone https://github.com/karpathy/nanochat" in result.output


def test_a_plan_from_another_version_is_refused(tmp_path):
    plan = json.loads(invoke("plan", "--model", "smoke", "--json").output)
    plan["version"] = 99
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    result = invoke("node", "run", "--plan", str(path), "--storage", str(tmp_path / "s"))
    assert result.exit_code == 1 and "runner plan --json > plan.json" in result.output


@pytest.mark.parametrize("args", [["ls", "s3://some-bucket-zz/x"], ["report", "r", "--storage", "s3://some-bucket-zz/x"],
                                  ["sync", "s3://some-bucket-zz/x", "/tmp/nowhere-zz"]])
def test_laptop_commands_explain_storage_failures(args, stopped_s3_endpoint):
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": stopped_s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    result = invoke(*args, env=env)
    assert result.exit_code == 1, result.output
    assert "Cannot reach the storage" in result.output and "To fix:" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_a_file_in_the_way_of_the_storage_folder(tmp_path):
    (tmp_path / "storage").write_text("not a folder")
    result = invoke("node", "run", "--storage", str(tmp_path / "storage"), "--model", "smoke")
    assert result.exit_code == 1 and "Cannot use" in result.output and "To fix:" in result.output
