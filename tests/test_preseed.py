"""Pre-seeding: files nanochat would fetch lazily are put into storage before training, once, or the run stops
early with what to put where; --offline skips what needs a missing file and says so."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path

import pytest

from harness import base_env, eval_bundle_zip, make_double, preseed_files, read_calls, runner

QUICK_RETRIES = {"RUNNER_PRESEED_ATTEMPTS": "2", "RUNNER_PRESEED_BACKOFF_SEC": "0.1"}


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the pre-seed downloads; counts requests; stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    eval_bundle_zip(root / "eval_bundle.zip")
    (root / "identity_conversations.jsonl").write_text('{"messages": []}\n')
    (root / "words_alpha.txt").write_text("apple\nbanana\n")
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def plan_with_urls(tmp_path: Path, base_url: str) -> Path:
    result = runner(["plan", "--model", "smoke", "--json"], base_env(tmp_path))
    plan = json.loads(result.output)
    for item in plan["preseed"].values():
        if "url" in item:
            item["url"] = f"{base_url}/{item['url'].rsplit('/', 1)[1]}"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def run_plan(plan: Path, storage: Path, double: Path, env: dict, *extra: str):
    return runner(["node", "run", "--plan", str(plan), "--storage", str(storage), "--nanochat-dir", str(double),
                   "--python", sys.executable, "--run-id", "pre", *extra], env)


def test_downloads_once_into_storage_then_never_again(tmp_path, file_server):
    base_url, hits = file_server
    storage, double, env = tmp_path / "storage", make_double(tmp_path), base_env(tmp_path)
    plan = plan_with_urls(tmp_path, base_url)
    result = run_plan(plan, storage, double, env)
    assert result.code == 0, result.output
    assert sorted(hits) == ["/eval_bundle.zip", "/identity_conversations.jsonl", "/words_alpha.txt"]
    assert (storage / "eval_bundle" / "core.yaml").is_file()  # unpacked, never the zip (nanochat trips on that)
    assert not list(storage.rglob("*.zip"))
    assert (storage / "identity_conversations.jsonl").is_file() and (storage / "words_alpha.txt").is_file()
    assert list((storage / "cache" / "tiktoken").iterdir()) and list((storage / "cache" / "hf").rglob("*.bin"))
    downloads = (tmp_path / "downloads.txt").read_text().splitlines()
    assert "tiktoken gpt2" in downloads and any(d.startswith("datasets HuggingFaceTB/smol-smoltalk") for d in downloads)
    # Phases ran offline against the staged caches.
    mid = next(c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.mid_train")
    assert mid["env"]["HF_HUB_OFFLINE"] == "1" and mid["env"]["HF_HOME"].endswith("cache/hf")

    # A second run on a fresh node, everything forced: nothing is downloaded again.
    (tmp_path / "downloads.txt").unlink()
    hits.clear()
    again = run_plan(plan, storage, double, dict(env, RUNNER_SCRATCH=str(tmp_path / "scratch-2")), "--force")
    assert again.code == 0, again.output
    assert hits == [] and not (tmp_path / "downloads.txt").exists()


def test_air_gapped_storage_needs_no_network(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    env = base_env(tmp_path, {"STAND_IN_NETWORK": "down", **QUICK_RETRIES})
    plan = plan_with_urls(tmp_path, "http://127.0.0.1:9")  # nothing listens on the discard port
    result = run_plan(plan, storage, double, env)
    assert result.code == 0, result.output
    assert not (tmp_path / "downloads.txt").exists()


def test_failed_download_stops_before_training_and_says_what_to_put_where(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    env = base_env(tmp_path, {"STAND_IN_NETWORK": "down", **QUICK_RETRIES})
    plan = plan_with_urls(tmp_path, "http://127.0.0.1:9")
    result = run_plan(plan, storage, double, env)
    assert result.code == 5, result.output
    assert "no training phase has started" in result.output
    assert f"copy it to {storage}/eval_bundle" in result.output
    assert f"copy /some/dir to {storage}/cache/hf" in result.output
    assert "--offline" in result.output and "Traceback" not in result.output
    assert read_calls(tmp_path / "calls.jsonl") == []


def test_offline_skips_what_needs_missing_files_and_says_which(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    env = base_env(tmp_path, {"STAND_IN_NETWORK": "down"})
    result = run_plan(plan_with_urls(tmp_path, "http://127.0.0.1:9"), storage, double, env, "--offline")
    assert result.code == 0, result.output
    ran = [c["module"] for c in read_calls(tmp_path / "calls.jsonl")]
    assert "scripts.base_train" in ran and "scripts.tok_eval" not in ran and "scripts.mid_train" not in ran
    base_train = next(c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train")
    assert "--core_metric_every=-1" in base_train["argv"]  # trained without the CORE eval instead of crashing
    for text in ("skipped: tokenizer.tok_eval: tiktoken missing (--offline)", "skipped: base.base_eval: eval_bundle missing",
                 "skipped: mid: step mid_train was skipped", "skipped: sft: needs mid_checkpoints/d4"):
        assert text in result.output
    status = json.loads((storage / "_runner/runs/pre/status.json").read_text())
    assert status["phases"]["sft"]["state"] == "skipped"
    # Later, with the files in storage, a normal run does the skipped work.
    preseed_files(storage)
    result = run_plan(plan_with_urls(tmp_path, "http://127.0.0.1:9"), storage, double, env)
    assert result.code == 0, result.output
    ran_later = [c["module"] for c in read_calls(tmp_path / "calls.jsonl")][len(ran):]
    assert ran_later[:2] == ["scripts.tok_eval", "scripts.base_eval"] and "scripts.chat_sft" in ran_later
