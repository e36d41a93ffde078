"""What nanochat's processes see of the node's environment (the real CLI, the nanochat test double, which records
the names of every variable it was given): the cache variables the libraries read point at the staged caches even
when the cluster sets its own (HF_DATASETS_CACHE, HF_HUB_CACHE), and the agent's storage keys and other secrets
never reach them."""

from __future__ import annotations

from harness import base_env, make_double, node_run, read_calls, seed_s3
from test_preseed import QUICK_RETRIES, file_server, plan_with_urls, run_plan  # noqa: F401 - file_server is a fixture


def test_hf_caches_set_by_the_cluster_are_overridden_for_preseed_and_phases(tmp_path, file_server):  # noqa: F811
    url, _ = file_server
    storage, double = tmp_path / "storage", make_double(tmp_path)
    elsewhere = tmp_path / "cluster-cache"  # a common cluster setting: every user's datasets cache on shared disk
    env = base_env(tmp_path, {"HF_DATASETS_CACHE": str(elsewhere / "datasets"), "HF_HUB_CACHE": str(elsewhere / "hub"),
                              "HUGGINGFACE_HUB_CACHE": str(elsewhere / "hub"), **QUICK_RETRIES})
    result = run_plan(plan_with_urls(tmp_path, url), storage, double, env)
    assert result.code == 0, result.output
    # The online pre-seed filled the Arrow cache inside the item, where an offline `datasets` looks.
    assert any((storage / "cache/hf/datasets/HuggingFaceTB___smol-smoltalk/default").iterdir())
    assert any((storage / "cache/hf/datasets/openai___openai_humaneval/openai_humaneval").iterdir())
    assert not elsewhere.exists()
    hf_home = tmp_path / "scratch/cache/hf"
    users = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] in ("scripts.mid_train", "scripts.chat_sft", "scripts.chat_eval")]
    assert users
    for call in users:
        assert call["env"]["HF_HOME"] == str(hf_home)
        assert call["env"]["HF_DATASETS_CACHE"] == str(hf_home / "datasets")
        assert call["env"]["HF_HUB_CACHE"] == str(hf_home / "hub")
        assert call["env"]["HF_DATASETS_OFFLINE"] == "1"


def test_no_storage_key_or_runner_secret_reaches_nanochat(s3_bucket, tmp_path):
    seed_s3(s3_bucket.url, s3_bucket.storage_options, tmp_path)
    secrets = {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x", "RUNNER_API_SECRET": "x", "GITHUB_TOKEN": "x",
               "OPENAI_API_KEY": "x", "HF_TOKEN": "hf-x"}
    env = base_env(tmp_path, {**s3_bucket.env, **secrets})  # the agent needs the AWS keys to reach its storage
    result = node_run(s3_bucket.url, make_double(tmp_path), env)
    assert result.code == 0, result.output
    calls = read_calls(tmp_path / "calls.jsonl")
    assert len(calls) > 10
    for call in calls:
        given = set(call["env_names"])
        assert not [n for n in given if n.startswith(("AWS_", "MODAL_", "RUNNER_"))], (call["module"], sorted(given))
        assert not given & {"GITHUB_TOKEN", "OPENAI_API_KEY"}
        assert call["env"]["HF_TOKEN_present"]  # what nanochat does use is kept
        assert "PATH" in given and "NANOCHAT_BASE_DIR" in given
