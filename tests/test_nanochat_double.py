"""Tests of the nanochat TEST DOUBLE in tests/nanochat_double (not of nanochat itself).

Each test runs the double's modules with `python -m` in subprocesses, cwd = the double's folder
and NANOCHAT_BASE_DIR = a tmp dir, the way the runner drives a real checkout.
"""
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from harness import seed_hf_datasets

pytest.importorskip("pyarrow")  # the double writes and reads real parquet shards

DOUBLE = Path(__file__).resolve().parent / "nanochat_double"
SEED = "a1ccb3dc0b7095620751498b8652a6d6647d8c01"
LATEST = "92d63d4e8bb4df75c3b71618f31ddde2378b2bcd"
SMALL = ["--depth=4", "--max_seq_len=512", "--device_batch_size=1", "--eval_tokens=512",
         "--core_metric_every=-1", "--total_batch_size=512", "--num_iterations=10"]
SMALL_LATEST = [f.replace("_", "-") for f in SMALL] + ["--window-pattern=L"]
SEED_STEP = re.compile(r"^step \d{5}/\d{5} \(\d+\.\d{2}%\) \| loss: \d+\.\d{6} \| lrm: \d\.\d{2} \| dt: \d+\.\d{2}ms \| "
                       r"tok/sec: [\d,]+ \| mfu: \d+\.\d{2} \| total time: \d+\.\d{2}m( \| eta: \d+\.\dm)?$", re.M)
LATEST_STEP = re.compile(r"^step \d{5}/\d{5} \(\d+\.\d{2}%\) \| loss: \d+\.\d{6} \| lrm: \d\.\d{2} \| dt: \d+\.\d{2}ms \| "
                         r"tok/sec: [\d,]+ \| bf16_mfu: \d+\.\d{2} \| epoch: 1 pq: \d+ rg: \d+ \| total time: "
                         r"\d+\.\d{2}m( \| eta: \d+\.\dm)?$", re.M)
# the caller's environment must not leak knobs, caches or torchrun variables into the double
SCRUB = ("NANOCHAT_", "HF_", "TIKTOKEN_", "WANDB_", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def run(module, *args, base, commit=SEED, env=None, cwd=DOUBLE, pre=(), timeout=120):
    e = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    e.update(NANOCHAT_BASE_DIR=str(base), NANOCHAT_DOUBLE_COMMIT=commit, **(env or {}))
    return subprocess.run([sys.executable, *pre, "-m", module, *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def caches(tmp_path):
    env = {}
    (tmp_path / "tiktoken").mkdir(exist_ok=True)
    (tmp_path / "tiktoken" / "cached").write_text("x")
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path / "tiktoken")
    seed_hf_datasets(tmp_path / "hf")
    env["HF_HOME"] = str(tmp_path / "hf")
    return env


def stage(base, commit=SEED, train=True):
    """Shards + tokenizer (+ a small base model at step 10), as earlier phases would leave them."""
    ok(run("nanochat.dataset", "-n", "3", base=base, commit=commit))
    ok(run("scripts.tok_train", base=base, commit=commit))
    if train:
        ok(run("scripts.base_train", *(SMALL if commit == SEED else SMALL_LATEST), base=base, commit=commit))


def stage_extras(base):
    (base / "identity_conversations.jsonl").write_text('[{"role":"user","content":"hi"}]\n')
    (base / "words_alpha.txt").write_text("apple\n")
    (base / "eval_bundle").mkdir(exist_ok=True)
    for name in ("core.yaml", "eval_meta_data.csv"):
        (base / "eval_bundle" / name).write_text("")


def test_unknown_flag_exits_2(tmp_path):
    result = run("scripts.base_train", "--no-such-flag=1", base=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag=1" in result.stderr


@pytest.mark.parametrize("commit,module,flag,rc", [
    (SEED, "scripts.base_train", "--device-batch-size=1", 2),
    (SEED, "scripts.base_train", "--device_batch_size=1", 1),   # accepted; then no tokenizer
    (LATEST, "scripts.base_train", "--device_batch_size=1", 2),
    (LATEST, "scripts.base_train", "--device-batch-size=1", 1),
    (SEED, "scripts.tok_train", "--vocab-size=100", 2),
    (LATEST, "scripts.tok_train", "--vocab_size=100", 2),
    (SEED, "scripts.chat_eval", "--max_problems=3", 2),         # chat_eval takes dashes at both pins
])
def test_flag_style_follows_the_pin(tmp_path, commit, module, flag, rc):
    args = [flag] + (["-i", "sft"] if module == "scripts.chat_eval" else [])
    result = run(module, *args, base=tmp_path, commit=commit)
    assert result.returncode == rc, result.stderr
    if rc == 1:
        assert "tokenizer.pkl" in result.stderr  # got past argparse, failed on the missing input


@pytest.mark.parametrize("commit,module", [(LATEST, "scripts.mid_train"), (LATEST, "scripts.base_loss"),
                                          (LATEST, "scripts.chat_web"), (LATEST, "nanochat.report"),
                                          (SEED, "scripts.infer_bench")])
def test_module_missing_at_pin_fails_like_python_m(tmp_path, commit, module):
    result = run(module, base=tmp_path, commit=commit)
    assert result.returncode == 1
    assert result.stderr.strip() == f"{sys.executable}: No module named {module}"


def test_seed_pipeline_produces_the_expected_files(tmp_path):
    base, env = tmp_path / "base", caches(tmp_path)
    t0 = time.time()
    ok(run("nanochat.report", "reset", base=base))
    stage(base, train=False)
    assert sorted(p.name for p in (base / "base_data").iterdir()) == [f"shard_0000{i}.parquet" for i in range(3)]
    ok(run("scripts.tok_eval", base=base, env=env))
    train = ok(run("scripts.base_train", *SMALL, base=base))
    assert len(SEED_STEP.findall(train.stdout)) == 10
    assert "Step 00010 | Validation bpb: " in train.stdout
    ckpt = base / "base_checkpoints" / "d4"
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta_000010.json", "model_000010.pt", "optim_000010_rank0.pt"]
    meta = json.loads((ckpt / "meta_000010.json").read_text())
    assert meta["step"] == 10 and meta["model_config"]["n_layer"] == 4 and meta["user_config"]["depth"] == 4
    assert {"val_bpb", "device_batch_size", "max_seq_len", "dataloader_state_dict", "loop_state"} <= set(meta)
    ok(run("scripts.base_loss", "--device_batch_size=1", base=base))
    stage_extras(base)
    assert "CORE" in ok(run("scripts.base_eval", base=base)).stdout
    assert (base / "base_eval" / "base_model_000010.csv").exists()
    ok(run("scripts.mid_train", "--device_batch_size=1", "--max_seq_len=512", "--total_batch_size=512",
           "--num_iterations=4", base=base, env=env))
    assert (base / "mid_checkpoints" / "d4" / "model_000003.pt").exists()  # upstream's prefetch: ceil((4-1)/1)
    assert "MMLU accuracy: " in ok(run("scripts.chat_eval", "-i", "mid", "-x", "10", base=base, env=env)).stdout
    ok(run("scripts.chat_sft", "--num_iterations=3", base=base, env=env))
    sft = base / "chatsft_checkpoints" / "d4"
    assert sorted(p.name for p in sft.iterdir()) == ["meta_000002.json", "model_000002.pt"]  # no optimizer at seed
    ok(run("scripts.chat_eval", "-i", "sft", base=base, env=env))
    ok(run("scripts.chat_rl", "--save_every=2", base=base, env=dict(env, NANOCHAT_DOUBLE_MAX_STEPS="5")))
    assert sorted(p.name for p in (base / "chatrl_checkpoints" / "d4").glob("model_*")) == \
        ["model_000002.pt", "model_000004.pt"]
    ok(run("scripts.chat_eval", "-i", "rl", "-a", "GSM8K", base=base, env=env))
    reply = ok(run("scripts.chat_cli", "-p", "hello there", base=base))
    assert "Assistant: " in reply.stdout and "hello there" in reply.stdout
    copy = tmp_path / "checkout"  # generate copies report.md into the cwd: keep it out of the repo
    shutil.copytree(DOUBLE, copy, ignore=shutil.ignore_patterns("__pycache__", "report.md"))
    ok(run("nanochat.report", "generate", base=base, cwd=copy,
           env={"NANOCHAT_DOUBLE_FLAGS_DIR": str(DOUBLE.parent.parent / "runner" / "recipes")}))
    sections = {p.name for p in (base / "report").iterdir()}
    assert {"header.md", "tokenizer-training.md", "tokenizer-evaluation.md", "base-model-training.md",
            "base-model-loss.md", "base-model-evaluation.md", "midtraining.md", "chat-evaluation-mid.md",
            "chat-sft.md", "chat-evaluation-sft.md", "chat-rl.md", "chat-evaluation-rl.md", "report.md"} <= sections
    assert "## Summary" in (copy / "report.md").read_text()
    assert time.time() - t0 < 60


def test_latest_pipeline(tmp_path):
    base, env = tmp_path / "base", caches(tmp_path)
    stage(base, LATEST, train=False)
    assert sorted(p.name for p in (base / "base_data_climbmix").iterdir()) == \
        ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet", "shard_06542.parquet"]
    (base / "task_data" / "openai--gsm8k").mkdir(parents=True)  # latest caches task data here, not in HF_HOME
    (base / "task_data" / "openai--gsm8k" / "manifest.json").write_text("{}")
    train = ok(run("scripts.base_train", *SMALL_LATEST, base=base, commit=LATEST))
    assert len(LATEST_STEP.findall(train.stdout)) == 10
    assert re.search(r"^Step 00010 \| Validation bpb: \d\.\d{6}$", train.stdout, re.M)
    ok(run("scripts.chat_sft", "--num-iterations=3", base=base, commit=LATEST, env=env))
    assert (base / "chatsft_checkpoints" / "d4" / "optim_000002_rank0.pt").exists()  # all ranks save at latest
    assert "ChatCORE metric: " in ok(run("scripts.chat_eval", "-i", "sft", base=base, commit=LATEST, env=env)).stdout
    mid = run("scripts.chat_eval", "-i", "mid", base=base, commit=LATEST, env=env)
    assert mid.returncode == 1 and "KeyError: 'mid'" in mid.stderr
    bench = ok(run("scripts.infer_bench", "-i", "sft", "--batch-sizes", "1,4", base=base, commit=LATEST))
    assert [row["batch_size"] for row in json.loads(bench.stdout.splitlines()[-1])["sweep"]] == [1, 4]
    assert not (base / "report").exists()


def test_save_every_and_resume(tmp_path):
    stage(tmp_path, train=False)
    args = SMALL + ["--save_every=4"]
    ok(run("scripts.base_train", *args, base=tmp_path))
    ckpt = tmp_path / "base_checkpoints" / "d4"
    assert sorted(p.name for p in ckpt.glob("optim_*")) == [f"optim_0000{s:02d}_rank0.pt" for s in (4, 8, 10)]
    resumed = ok(run("scripts.base_train", *args, "--resume_from_step=4", base=tmp_path))
    assert "Resuming optimization from step 4" in resumed.stdout
    assert SEED_STEP.findall(resumed.stdout) and resumed.stdout.count("\nstep ") == 6
    assert re.search(r"^step 00004/00010", resumed.stdout, re.M) and "model_000004.pt" not in resumed.stderr
    missing = run("scripts.base_train", *args, "--resume_from_step=5", base=tmp_path)
    assert missing.returncode == 1 and str(ckpt / "model_000005.pt") in missing.stderr
    (ckpt / "optim_000008_rank0.pt").unlink()
    missing = run("scripts.base_train", *args, "--resume_from_step=8", base=tmp_path)
    assert missing.returncode == 1 and str(ckpt / "optim_000008_rank0.pt") in missing.stderr
    # Saved by 2 processes, resumed by 1: rank 0's shard records the world that wrote it (on several nodes a node
    # holds only its own ranks' shards, so the shard itself must say).
    with zipfile.ZipFile(ckpt / "optim_000004_rank0.pt", "w") as zf:
        zf.writestr("optim_000004_rank0/data.pkl", pickle.dumps({"nanochat_double": True, "step": 4, "rank": 0, "world_size": 2}))
    mismatch = run("scripts.base_train", *args, "--resume_from_step=4", base=tmp_path)
    assert mismatch.returncode == 1 and "WORLD_SIZE is 1" in mismatch.stderr


def test_missing_inputs_fail_naming_the_path(tmp_path):
    base, env = tmp_path / "base", caches(tmp_path)
    ok(run("nanochat.dataset", "-n", "1", base=base))
    one_shard = run("scripts.tok_train", base=base)
    assert one_shard.returncode == 1 and str(base / "base_data") in one_shard.stderr
    stage(base)
    cases = [  # (module, args, env, path expected in stderr)
        ("scripts.tok_eval", [], {}, "TIKTOKEN_CACHE_DIR"),
        ("scripts.base_eval", [], {}, str(base / "eval_bundle.zip")),
        ("scripts.mid_train", [], {}, "HF_HOME"),
        ("scripts.mid_train", [], env, str(base / "identity_conversations.jsonl")),
        ("scripts.chat_sft", [], env, str(base / "mid_checkpoints")),
        ("scripts.chat_eval", ["-i", "base"], {}, "HF_HOME"),
        ("scripts.chat_eval", ["-i", "base", "-a", "SpellingBee"], {}, str(base / "words_alpha.txt")),
        ("scripts.chat_cli", ["-i", "rl"], {}, str(base / "chatrl_checkpoints")),
    ]
    for module, args, extra, needle in cases:
        result = run(module, *args, base=base, env=extra)
        assert result.returncode == 1 and needle in result.stderr, (module, result.stderr[-1500:])
    (base / "tokenizer" / "tokenizer.pkl").unlink()
    result = run("scripts.base_loss", base=base)
    assert result.returncode == 1 and str(base / "tokenizer" / "tokenizer.pkl") in result.stderr
    # CORE is due at step 5 and at the end: the bundle is fetched lazily, before that step's save
    stage(base, train=False)
    lazy = run("scripts.base_train", *SMALL, "--core_metric_every=5", "--model_tag=core", base=base)
    assert lazy.returncode == 1 and "eval_bundle" in lazy.stderr and "step 00004/00010" in lazy.stdout
    assert not (base / "base_checkpoints" / "core").exists()


def test_fail_knobs(tmp_path):
    stage(tmp_path)
    failed = run("scripts.base_train", *SMALL, "--model_tag=x", base=tmp_path, env={"NANOCHAT_DOUBLE_FAIL": "base_train"})
    assert failed.returncode == 1 and "Traceback" in failed.stderr and "injected failure" in failed.stderr
    assert failed.stdout.strip() and not (tmp_path / "base_checkpoints" / "x").exists()
    env = dict(caches(tmp_path), NANOCHAT_DOUBLE_FAIL="chat_eval:mid")
    assert run("scripts.chat_eval", "-i", "mid", base=tmp_path, env=env).returncode == 1
    ok(run("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy", base=tmp_path, env=env))
    at_step = run("scripts.base_train", *SMALL, "--save_every=3", "--model_tag=y", base=tmp_path,
                  env={"NANOCHAT_DOUBLE_FAIL_AT_STEP": "6"})
    assert at_step.returncode == 1 and "step 00005/00010" in at_step.stdout and "step 00006/" not in at_step.stdout
    assert sorted(p.name for p in (tmp_path / "base_checkpoints" / "y").glob("model_*")) == \
        ["model_000003.pt", "model_000006.pt"]


def test_hang_knob_goes_silent_then_finishes(tmp_path):
    stage(tmp_path)
    e = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    e.update(NANOCHAT_BASE_DIR=str(tmp_path), NANOCHAT_DOUBLE_HANG="base_loss", NANOCHAT_DOUBLE_HANG_SEC="2")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "scripts.base_loss", "--device_batch_size=1"], cwd=DOUBLE, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    t_first = time.time()
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    assert first.strip() and t_first - t0 < 2 and time.time() - t_first >= 1.9
    assert "val bpb: " in rest


def test_downloader_failures_exit_0_and_calls_log(tmp_path):
    calls = tmp_path / "calls.jsonl"
    env = {"NANOCHAT_DOUBLE_SHARD_FAILURES": "1", "NANOCHAT_DOUBLE_CALLS": str(calls), "WANDB_API_KEY": "s3cret"}
    result = ok(run("nanochat.dataset", "-n", "3", base=tmp_path, env=env))
    assert "Failed to download shard_00002.parquet after 5 attempts" in result.stdout
    assert "Done! Downloaded: 2/3 shards" in result.stdout
    again = ok(run("nanochat.dataset", "-n", "3", base=tmp_path))
    assert again.stdout.count("Skipping ") == 2 and (tmp_path / "base_data" / "shard_00002.parquet").exists()
    record = json.loads(calls.read_text().splitlines()[0])
    assert record["script"] == "dataset" and record["argv"] == ["-n", "3"] and record["world_size"] == 1
    assert record["env"]["NANOCHAT_BASE_DIR"] == str(tmp_path) and record["env"]["WANDB_API_KEY_present"] is True
    assert "s3cret" not in calls.read_text()


def test_chat_web_serves_until_terminated(tmp_path):
    stage(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    e.update(NANOCHAT_BASE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "-i", "base", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=DOUBLE, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read())
                break
            except OSError:
                time.sleep(0.1)
        assert health["status"] == "ok"
        assert b"<title>NanoChat</title>" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"Uvicorn running on" in err


@pytest.mark.torchrun
def test_base_train_under_torchrun_writes_one_optim_shard_per_rank(tmp_path):
    if subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode != 0:
        pytest.skip("torch is not installed: torch.distributed.run is unavailable")
    stage(tmp_path, train=False)
    args = [a.replace("--total_batch_size=512", "--total_batch_size=1024") for a in SMALL]  # 2 ranks x 512 tokens
    result = ok(run("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scripts.base_train",
                    "--", *args, base=tmp_path, timeout=300))
    ckpt = tmp_path / "base_checkpoints" / "d4"
    assert sorted(p.name for p in ckpt.iterdir()) == \
        ["meta_000010.json", "model_000010.pt", "optim_000010_rank0.pt", "optim_000010_rank1.pt"]
    assert len(SEED_STEP.findall(result.stdout)) == 10  # only rank 0 prints progress
