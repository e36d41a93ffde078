"""Fault scenarios of the node agent's staging and environment (rows 5, 7, 9, 14, 16, 17 and 18 of the robustness
issue): a shard gone from storage, `--only base` after a crash, a scratch disk that fills up, a relative scratch,
the agent's AWS keys, a cluster's HF_DATASETS_CACHE, and a pre-seeded item whose upload was cut. Setups as in
tests/test_node_faults.py, test_resume.py, test_disk_full.py, test_refusals.py, test_phase_env.py, test_preseed_whole.py."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

from tests.bench.fault_lab import Lab, Outcome, Scenario, clear_error, stop_within, wait_for
from tests.harness import REPO, eval_bundle_zip, preseed_files, read_calls, runner, seed_s3, smoke_plan, start_node
from tests.infra.faults import small_disk

SHARDS = [f"shard_{i:05d}.parquet" for i in range(4)]
SCRATCH_MB = 1500  # what the smoke plan asks scratch to hold (shards + checkpoints), so the space check passes
QUICK_RETRIES = {"RUNNER_PRESEED_ATTEMPTS": "2", "RUNNER_PRESEED_BACKOFF_SEC": "0.1"}


def _calls(lab: Lab, module: str) -> list[dict]:
    return [c for c in read_calls(lab.tmp / "calls.jsonl") if c["module"] == module]


def missing_shard(lab: Lab) -> Outcome:
    """A shard deleted from storage, base rerun on a fresh scratch: named and stopped; `--only data` then mends it."""
    store = lab.tmp / "storage"
    preseed_files(store)
    for phase in ("data", "tokenizer"):
        assert lab.node(str(store), lab.env(), "--only", phase)[0].code == 0
    (store / "base_data/shard_00002.parquet").unlink()
    fresh = lab.env(RUNNER_SCRATCH=lab.tmp / "fresh-scratch")  # another node: nothing cached
    result, seconds = lab.node(str(store), fresh, "--only", "base")
    named = result.code == 4 and clear_error(result, "1 of 4 shards are missing (first: shard_00002.parquet)", "--only data")
    trained = bool(_calls(lab, "scripts.base_train"))
    mended = lab.node(str(store), fresh, "--only", "data")[0].code == 0 and lab.node(str(store), fresh, "--only", "base")[0].code == 0
    landed = sorted(p.name for p in (store / "base_data").iterdir() if p.suffix == ".parquet")
    return Outcome(named and not trained and mended, landed != SHARDS, seconds, "trained anyway" if trained else "")


def only_base_resumes(lab: Lab) -> Outcome:
    """base crashed at step 17 (checkpoints 5, 10, 15); `--only base` resumes from 15 instead of starting fresh."""
    from runner.checkpoints import stored_checkpoints
    from runner.storage import open_storage

    store = lab.tmp / "storage"
    preseed_files(store)
    plan = smoke_plan(lab.tmp, iterations=30, save_every=5)
    crashed, _ = lab.node(str(store), lab.env(NANOCHAT_DOUBLE_FAIL_AT_STEP="17"), plan=plan)
    if crashed.code != 4:
        return Outcome(False, False, float("nan"), "the base run to resume did not crash")
    result, seconds = lab.node(str(store), lab.env(), "--only", "base", plan=plan)
    train = _calls(lab, "scripts.base_train")[-1]
    resumed = "--resume_from_step=15" in train["argv"] and "starting fresh" not in result.output
    complete = set(stored_checkpoints(open_storage(str(store)), "base_checkpoints/d4").complete)
    return Outcome(result.code == 0 and resumed, complete != {5 * i for i in range(1, 7)}, seconds,
                   "resumed from step 15" if resumed else "started fresh")


def scratch_disk_full(lab: Lab) -> Outcome:
    """A real tmpfs as scratch, filled by another writer during training: the disk-full message, status "failed";
    then space is freed and the same command finishes. Seconds: from the disk being full to the agent's exit."""
    if os.geteuid() != 0:
        return Outcome(False, False, float("nan"), "skipped: mounting a tmpfs needs root")
    store, scratch = lab.tmp / "storage", lab.tmp / "scratch"
    preseed_files(store)
    with small_disk(scratch, SCRATCH_MB * 1024):
        env = lab.env(NANOCHAT_DOUBLE_STEP_SEC="0.3")
        plan = smoke_plan(lab.tmp)
        agent = start_node(plan, str(store), lab.double(), env, lab.tmp / "run.log", "--heartbeat-sec", "1", "--run-id", "bench")
        if not wait_for(lambda: _calls(lab, "scripts.base_train"), agent, timeout=120):
            agent.kill()
            agent.wait()
            return Outcome(False, False, float("nan"), "training never started")
        filler = scratch / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, timeout=120)  # until ENOSPC
        seconds = stop_within(agent, bound=180)
        output = lab.log()
        status = json.loads((store / "_runner/runs/bench/status.json").read_text())
        clear = (agent.returncode == 6 and "The disk filled up while" in output and "Free space on that disk" in output
                 and "Exception in thread" not in output)  # nanochat's own traceback is in the log; none of the runner's threads
        failed = status["state"] == "failed" and "space" in (status.get("error") or "").lower()
        filler.unlink()
        again, _ = lab.node(str(store), env, "--heartbeat-sec", "1", plan=plan)
    state = json.loads((store / "_runner/runs/bench/status.json").read_text())["state"]
    return Outcome(clear and failed and again.code == 0, state != "succeeded", seconds,
                   "" if failed else f"exit {agent.returncode}, status {status['state']!r} after the exit; "
                   f"output ends: {output[-400:]!r}")


def relative_scratch(lab: Lab) -> Outcome:
    """`--scratch rel-scratch` from another working folder: made absolute; shards land there, not in the checkout."""
    store = lab.tmp / "storage"
    preseed_files(store)
    double = lab.double()
    env = lab.env()
    env.pop("RUNNER_SCRATCH")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "node", "run", "--storage", str(store), "--model", "smoke", "--nanochat-dir",
                           str(double), "--python", sys.executable, "--scratch", "rel-scratch", "--only", "data"],
                          cwd=str(lab.tmp), env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    staged = lab.tmp / "rel-scratch/base/base_data"
    absolute = f"scratch {lab.tmp / 'rel-scratch'}" in proc.stdout
    strays = [p for p in (double / "rel-scratch", REPO / "rel-scratch") if p.exists()]
    ok = proc.returncode == 0 and absolute and staged.is_dir() and "shard_00000.parquet" in os.listdir(staged)
    return Outcome(ok and not strays, bool(strays), seconds, f"shards in {strays[0]}" if strays else "")


def aws_keys_withheld(lab: Lab) -> Outcome:
    """The agent holds AWS keys (its storage is S3) and other secrets: none of them reaches a nanochat process."""
    url = lab.bucket()
    seed_s3(url, lab.server.storage_options(), lab.tmp)
    env = lab.s3_env(GITHUB_TOKEN="x", OPENAI_API_KEY="x", MODAL_TOKEN_SECRET="x", HF_TOKEN="hf-x")
    result, seconds = lab.node(url, env)
    calls = read_calls(lab.tmp / "calls.jsonl")
    leaked = sorted({n for c in calls for n in c["env_names"] if n.startswith(("AWS_", "MODAL_", "RUNNER_"))
                     or n in ("GITHUB_TOKEN", "OPENAI_API_KEY")})
    kept = all(c["env"]["HF_TOKEN_present"] and "NANOCHAT_BASE_DIR" in c["env_names"] for c in calls)
    return Outcome(result.code == 0 and len(calls) > 10 and not leaked and kept, False, seconds,
                   f"reached nanochat: {', '.join(leaked[:4])}" if leaked else f"{len(calls)} processes, no AWS_* among them")


def cluster_hf_cache(lab: Lab) -> Outcome:
    """HF_DATASETS_CACHE / HF_HUB_CACHE set by the cluster: the chat phases still read the staged cache (the double
    looks for the Arrow cache where `datasets` looks offline, so a wrong cache fails mid_train)."""
    store = lab.tmp / "storage"
    preseed_files(store)
    elsewhere = lab.tmp / "cluster-cache"
    env = lab.env(HF_DATASETS_CACHE=elsewhere / "datasets", HF_HUB_CACHE=elsewhere / "hub", HUGGINGFACE_HUB_CACHE=elsewhere / "hub")
    result, seconds = lab.node(str(store), env)
    hf_home = lab.tmp / "scratch/cache/hf"
    users = [c for c in read_calls(lab.tmp / "calls.jsonl") if c["module"] in ("scripts.mid_train", "scripts.chat_sft", "scripts.chat_eval")]
    staged = bool(users) and all(c["env"]["HF_DATASETS_CACHE"] == str(hf_home / "datasets") and c["env"]["HF_HOME"] == str(hf_home)
                                 for c in users)
    return Outcome(result.code == 0 and staged and not elsewhere.exists(), False, seconds,
                   "" if result.code == 0 else result.output.strip().splitlines()[-1][:80])


class _Downloads:
    """The pre-seed downloads served on 127.0.0.1 (as test_preseed.py's file_server fixture); counts requests."""

    def __init__(self, root):
        root.mkdir()
        eval_bundle_zip(root / "eval_bundle.zip")
        (root / "identity_conversations.jsonl").write_text('{"messages": []}\n')
        (root / "words_alpha.txt").write_text("apple\nbanana\n")
        hits = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args):
                hits.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def cut_preseed_upload(lab: Lab) -> Outcome:
    """eval_bundle's upload stopped after one file, before its manifest: the run fetches it again (only it)."""
    store = lab.tmp / "storage"
    preseed_files(store)
    (store / "eval_bundle/eval_meta_data.csv").unlink()
    (store / "_runner/preseed/eval_bundle.json").unlink()
    plan = json.loads(runner(["plan", "--model", "smoke", "--json"], lab.env()).output)
    with _Downloads(lab.tmp / "www") as downloads:
        for item in plan["preseed"].values():
            if "url" in item:
                item["url"] = f"{downloads.url}/{item['url'].rsplit('/', 1)[1]}"
        (lab.tmp / "plan.json").write_text(json.dumps(plan))
        result, seconds = lab.node(str(store), lab.env(STAND_IN_NETWORK="down", **QUICK_RETRIES), plan=lab.tmp / "plan.json")
    said = "pre-seed eval_bundle: in storage without its manifest" in result.output and "fetching it again" in result.output
    whole = (store / "eval_bundle/eval_meta_data.csv").is_file() and (store / "_runner/preseed/eval_bundle.json").is_file()
    evaluated = bool(_calls(lab, "scripts.base_eval"))
    return Outcome(result.code == 0 and said and downloads.hits == ["/eval_bundle.zip"] and evaluated, not whole, seconds,
                   f"fetched {downloads.hits}")


SCENARIOS = [
    Scenario("shard-missing", "5", "a shard deleted from storage, base rerun on a fresh scratch", "s to the error", missing_shard),
    Scenario("only-base-resumes", "7", "`--only base` after base crashed at step 17", "s of the rerun", only_base_resumes),
    Scenario("scratch-disk-full", "9", "scratch (a 1.5 GB tmpfs) filled up during training", "s from full disk to the error",
             scratch_disk_full),
    Scenario("relative-scratch", "14", "`--scratch rel-scratch` (relative)", "s of the data phase", relative_scratch),
    Scenario("aws-keys-withheld", "16", "AWS keys and other secrets in the agent's environment", "s of the run", aws_keys_withheld),
    Scenario("cluster-hf-cache", "17", "HF_DATASETS_CACHE / HF_HUB_CACHE set by the cluster", "s of the run", cluster_hf_cache),
    Scenario("preseed-cut-upload", "18", "pre-seeded item cut mid-upload (no manifest)", "s of the run (fetched again)",
             cut_preseed_upload),
]
