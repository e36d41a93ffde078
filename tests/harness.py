"""Helpers for the node-agent tests: a copy of the nanochat test double per test, pre-seeded storage, and
running the real `runner` CLI as a subprocess (so signals, exit codes and output are the real ones)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOUBLE = REPO / "tests" / "nanochat_double"
STAND_INS = REPO / "tests" / "stand_ins"
COMMITS = {"seed": "a1ccb3dc0b7095620751498b8652a6d6647d8c01", "latest": "92d63d4e8bb4df75c3b71618f31ddde2378b2bcd"}
RUN_TIMEOUT_SEC = 300


@dataclass
class Result:
    code: int
    output: str

    def calls(self, path: Path) -> list[dict]:
        return read_calls(path)


def make_double(tmp_path: Path, recipe: str = "seed") -> Path:
    """A private copy of the test double at the recipe's pin (report generate writes into its folder)."""
    target = tmp_path / f"nanochat-{recipe}"
    shutil.copytree(DOUBLE, target, ignore=shutil.ignore_patterns("__pycache__", "report.md"))
    (target / ".nanochat-commit").write_text(COMMITS[recipe] + "\n")
    return target


def read_calls(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def preseed_files(root: Path, recipe: str = "seed") -> None:
    """Put every pre-seed item into a local folder, as an air-gapped user would (copied into storage later)."""
    (root / "eval_bundle").mkdir(parents=True, exist_ok=True)
    (root / "eval_bundle" / "core.yaml").write_text("icl_tasks: []\n")
    (root / "eval_bundle" / "eval_meta_data.csv").write_text("Eval Task,Random baseline\n")
    (root / "cache" / "tiktoken").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "tiktoken" / "gpt2.bin").write_text("x")
    if recipe == "seed":
        (root / "identity_conversations.jsonl").write_text('[{"role": "user", "content": "who are you?"}]\n')
        (root / "words_alpha.txt").write_text("apple\nbanana\n")
        seed_hf_datasets(root / "cache" / "hf")
    else:
        (root / "task_data" / "openai--gsm8k").mkdir(parents=True, exist_ok=True)
        (root / "task_data" / "openai--gsm8k" / "manifest.json").write_text("{}")
    write_preseed_manifests(root, recipe)


# The datasets and configs seed's chat phases load (the recipe's hf_datasets snippet).
HF_DATASETS = [("HuggingFaceTB/smol-smoltalk", "default"), ("cais/mmlu", "all"), ("cais/mmlu", "auxiliary_train"),
               ("openai/gsm8k", "main"), ("allenai/ai2_arc", "ARC-Easy"), ("allenai/ai2_arc", "ARC-Challenge"),
               ("openai/openai_humaneval", "openai_humaneval")]


def seed_hf_datasets(hf_home: Path) -> None:
    """An HF_HOME whose `datasets` Arrow cache holds each dataset where an offline load looks for it."""
    for repo, config in HF_DATASETS:
        folder = hf_home / "datasets" / repo.replace("/", "___") / config / "0.0.0" / "stand-in"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{repo.split('/')[1]}-train.arrow").write_text("x")


def write_preseed_manifests(root: Path, recipe: str = "seed") -> None:
    """The manifest of every pre-seed item present under `root`, written last, as the runner does after an upload."""
    from runner.preseed import Item, manifest_for
    from runner.recipes import load_recipe

    for name, spec in load_recipe(recipe)["preseed"].items():
        item = Item(name, spec)
        if (root / item.path).exists():
            (root / item.manifest).parent.mkdir(parents=True, exist_ok=True)
            (root / item.manifest).write_text(json.dumps(manifest_for(root / item.path)))


def eval_bundle_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        zf.writestr("eval_bundle/eval_meta_data.csv", "Eval Task,Random baseline\n")
    return path


def base_env(tmp_path: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCHAT_DOUBLE", "AWS_", "WANDB_", "RUNNER_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), str(STAND_INS)]),
            "NANOCHAT_DOUBLE_FLAGS_DIR": str(REPO / "runner" / "recipes"),
            "NANOCHAT_DOUBLE_CALLS": str(tmp_path / "calls.jsonl"),
            "STAND_IN_CALLS": str(tmp_path / "downloads.txt"),
            "RUNNER_SCRATCH": str(tmp_path / "scratch"),
        }
    )
    env.update(extra or {})
    return env


def runner(args: list[str], env: dict, timeout: float = RUN_TIMEOUT_SEC) -> Result:
    """Run `runner ARGS` as a real process; output is stdout and stderr together."""
    proc = subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout + proc.stderr)


def node_run(storage: str, double: Path, env: dict, *extra: str, model: str = "smoke", recipe: str = "seed") -> Result:
    args = ["node", "run", "--storage", storage, "--recipe", recipe, "--model", model, "--nanochat-dir", str(double),
            "--python", sys.executable, "--heartbeat-sec", "30", "--run-id", "test-run", *extra]
    return runner(args, env)


def write_shards(folder: Path, count: int, mb: int) -> dict[str, int]:
    """`count` random files of `mb` MiB named like nanochat's shards; returns {name: size}."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024)
    for i in range(count):
        with (folder / f"shard_{i:05d}.parquet").open("wb") as f:
            for _ in range(mb):
                f.write(block)
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def set_base_train_length(plan: dict, iterations: int, save_every: int) -> None:
    """Make the plan's base_train run `iterations` steps and checkpoint every `save_every` (in place)."""
    for phase in plan["phases"]:
        for step in phase["steps"]:
            if step["name"] == "base_train":
                step["args"] = [a for a in step["args"] if not a.startswith(("--num_iterations", "--save_every"))]
                step["args"] += [f"--num_iterations={iterations}", f"--save_every={save_every}"]


def smoke_plan(tmp_path: Path, iterations: int = 40, save_every: int = 5) -> Path:
    """The seed smoke plan with a longer base_train that checkpoints often (for the fault-injection tests)."""
    result = runner(["plan", "--model", "smoke", "--json"], base_env(tmp_path))
    plan = json.loads(result.output)
    set_base_train_length(plan, iterations, save_every)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def start_node(plan: Path, storage: str, double: Path, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    """`runner node run` in the background, output to `log`; the caller stops it (by PID)."""
    args = [sys.executable, "-m", "runner.cli", "node", "run", "--plan", str(plan), "--storage", storage, "--nanochat-dir",
            str(double), "--python", sys.executable, "--run-id", "fault", *extra]
    return subprocess.Popen(args, env=env, cwd=str(REPO), stdout=log.open("w"), stderr=subprocess.STDOUT)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def upload_tree(local: Path, url: str, storage_options: dict, under: str = "") -> None:
    """Copy a local folder (or its `under` subfolder) into an s3:// URL, keeping relative paths."""
    import fsspec

    fs = fsspec.filesystem("s3", **storage_options)
    for path in sorted(p for p in (local / under).rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{url[5:]}/{path.relative_to(local).as_posix()}")


def seed_s3(url: str, storage_options: dict, tmp_path: Path) -> None:
    """Every pre-seed item in an S3 storage, so a run there touches no network but the S3 server."""
    preseed_files(tmp_path / "seeded")
    upload_tree(tmp_path / "seeded", url, storage_options)
