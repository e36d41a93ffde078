"""The Slurm backend against a real Slurm cluster of two nodes on 127.0.0.1 (tests/infra/slurm.py): one sbatch
script, one node agent per node through srun, the double's ranks of both nodes in one gloo process group, a job
cancelled with scancel mid-training and a rerun that resumes on two nodes; bare mode's one-time install into the
shared home; preflight refusals from what sinfo and scontrol say. The cluster's GPUs are not tracked by Slurm (see tests/infra/slurm.py), so GPU plans name them with
--node-gpus 1; the double stands in for the CUDA ranks (gloo on CPU). Storage is a local folder both nodes see.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import REPO, base_env, make_double, preseed_files, read_calls

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (tests/run.sh installs the CPU wheel where there is one)")
RUNNER_ON_NODES = f"{sys.executable} -m runner.cli"  # the cluster's nodes share this machine's installation
JOB_TIMEOUT_SEC = 300


def submit_env(tmp_path: Path, cluster, **extra) -> dict:
    """A login shell of the cluster: Slurm's commands find it through SLURM_CONF; the submit folder is under HOME."""
    return base_env(tmp_path, {**cluster.env(), "HOME": str(tmp_path / "home"), "NANOCHAT_DIR": str(make_double(tmp_path)),
                               "RUNNER_NANOCHAT_PYTHON": sys.executable, **extra})


def up(env: dict, *args: str, timeout: float = JOB_TIMEOUT_SEC) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "runner.cli", "up", "--backend", "slurm", *args]
    return subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def queue(cluster) -> list[str]:
    return cluster.client("squeue", "-h", "-o", "%i").stdout.split()


def test_the_dry_run_prints_the_one_sbatch_script(tmp_path):
    env = base_env(tmp_path, {"HOME": str(tmp_path / "home")})
    gpu = up(env, "--nodes", "2", "--gpus", "8", "--model", "d20", "--partition", "gpu", "--account", "proj", "--time", "12:00:00",
             "--requeue", "--sbatch-arg", "qos=high", "--runner-bin", "/shared/venv/bin/runner", "--storage", "s3://bucket/run",
             "--run-id", "big", "--dry-run")
    assert gpu.returncode == 0, gpu.stderr
    script = gpu.stdout
    for directive in ("--job-name=nanochat-big", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive",
                      "--partition=gpu", "--account=proj", "--time=12:00:00", "--requeue", "--signal=B:USR1@120", "--qos=high"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert ('/shared/venv/bin/runner node run --storage s3://bucket/run --run-id big --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" '
            '--master "$MASTER_ADDR:$MASTER_PORT" --launch-id "$RUNNER_LAUNCH_ID"') in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and '"world_size": 16' in script  # the plan travels in the script
    assert "handle: slurm://JOBID" in script and not (tmp_path / "home").exists()  # nothing was submitted or written

    pyxis = up(env, "--smoke", "--container", "pyxis", "--image", "registry.example/nanochat-runner:v1", "--node-gpus", "1",
               "--storage", "/shared/run", "--run-id", "p", "--dry-run")
    assert pyxis.returncode == 0, pyxis.stderr
    assert "--container-image=registry.example/nanochat-runner:v1" in pyxis.stdout and "--container-mounts=/shared/run:/shared/run" in pyxis.stdout
    assert "--gpus-per-node" not in pyxis.stdout and "#SBATCH --no-requeue" in pyxis.stdout  # --node-gpus: Slurm tracks none
    no_image = up(env, "--smoke", "--container", "apptainer", "--storage", "/shared/run", "--dry-run")
    assert no_image.returncode == 1 and "--container apptainer needs the image" in no_image.stderr
    login = up(env, "--smoke", "--node-gpus", "1", "--host", "alice@login.example:2222", "--storage", "/shared/run", "--dry-run")
    assert login.returncode == 0, login.stderr
    assert "sbatch on alice@login.example:2222" in login.stdout and "handle: slurm://alice@login.example:2222/JOBID" in login.stdout
    relative = up(env, "--smoke", "--host", "alice@login.example", "--storage", "runs/x", "--dry-run")
    assert relative.returncode == 1 and "must be an absolute path on the cluster's shared filesystem" in relative.stderr
    wrong = up(env, "--smoke", "--mode", "bare", "--dry-run")
    assert wrong.returncode == 2 and "--mode: option(s) of --backend ssh" in wrong.stderr


def test_preflight_refuses_what_the_cluster_cannot_run(tmp_path, slurm_cluster):
    env = submit_env(tmp_path, slurm_cluster)
    common = ("--runner-bin", RUNNER_ON_NODES, "--storage", str(tmp_path / "storage"), "--run-id", "refused")
    no_partition = up(env, "--smoke", "--node-gpus", "1", "--partition", "gpu-h100", *common)
    assert no_partition.returncode == 1
    assert "The cluster has no partition 'gpu-h100'; it has: debug (default)." in no_partition.stderr
    no_gpus = up(env, "--smoke", *common)  # a GPU plan, and the nodes declare no gres
    assert no_gpus.returncode == 1
    assert "needs 1 node(s) with 1 GPU(s) each (Slurm gres gpu), but partition debug has 0 such node(s)" in no_gpus.stderr
    assert "--node-gpus N" in no_gpus.stderr and "--device cpu" in no_gpus.stderr
    too_many = up(env, "--smoke", "--nodes", "4", "--node-gpus", "1", *common)
    assert too_many.returncode == 1 and "runs on 4 node(s), but partition debug has 2 usable" in too_many.stderr
    short = up(env, "--smoke", "--node-gpus", "1", "--time", "00:02:00", "--signal-before", "30", *common)
    assert short.returncode == 1
    assert "Phase(s) mid (about 00:03:00), sft (about 00:03:00) cannot stop and resume (no checkpoints)" in short.stderr
    assert "Give each job at least --time" in short.stderr
    assert queue(slurm_cluster) == [] and not (tmp_path / "home/.nanochat-runner/slurm").exists()  # nothing submitted


@needs_torch
def test_two_nodes_train_as_one_world_and_a_rerun_after_scancel_resumes_on_two_nodes(tmp_path, slurm_cluster):
    storage = tmp_path / "storage"
    preseed_files(storage)
    # The whole smoke plan: base_train saves at steps 10 and 20 (1 s a step leaves time to cancel between them).
    env = submit_env(tmp_path, slurm_cluster, NANOCHAT_DOUBLE_STEP_SEC="1.0")
    args = ("--smoke", "--nodes", "2", "--device", "cuda", "--node-gpus", "1", "--runner-bin", RUNNER_ON_NODES,
            "--storage", str(storage), "--scratch", str(tmp_path / "scratch"), "--run-id", "two")

    first = up(env, *args, "--detach")
    assert first.returncode == 0, first.stdout + first.stderr
    handle = first.stdout.strip()
    assert handle.startswith("slurm://") and "preflight: nodes: 2 usable in debug; 1 GPU(s) each" in first.stderr
    job = handle.removeprefix("slurm://")
    deadline = time.monotonic() + JOB_TIMEOUT_SEC
    while not (storage / "base_checkpoints/d4/manifest_000010.json").exists():
        assert time.monotonic() < deadline and job in queue(slurm_cluster), cli(env, "logs", handle).stdout[-3000:]
        time.sleep(0.5)
    assert slurm_cluster.client("scancel", job).returncode == 0  # as a user, an admin or a preemption would
    while job in queue(slurm_cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    status = cli(env, "status", handle)
    assert "state:    cancelled" in status.stdout, status.stdout + status.stderr

    second = up(env, *args)  # the same run id: a new job, a new launch, resuming from the sealed checkpoint
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "all-reduce over 2 ranks (gloo), world size 2" in out  # both nodes' ranks in one process group
    assert "--nnodes=2 --node_rank=0" in out and "--nnodes=2 --node_rank=1" in out
    step = int(re.search(r"base_train: resuming from step (\d+), the newest complete checkpoint", out).group(1))
    assert step == 10  # the newest checkpoint sealed before scancel, not the start
    resumed = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train" and f"--resume_from_step={step}" in c["argv"]]
    assert sorted((c["rank"], c["world_size"]) for c in resumed) == [(0, 2), (1, 2)]
    sealed = json.loads((storage / "base_checkpoints/d4/manifest_000020.json").read_text())
    assert sealed["processes"] == 2 and {"optim_000020_rank0.pt", "optim_000020_rank1.pt"} <= set(sealed["files"])
    assert (tmp_path / "scratch/n2/base/base_checkpoints/d4/optim_000020_rank1.pt").is_file()  # each node its own scratch
    assert "checkpoint step 20: this node's shards are in storage (optim_000020_rank1.pt)" in out  # node 2 uploaded its own
    # mid's and SFT's evaluations load on both nodes the checkpoint their training step wrote on rank 0's node
    evals = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.chat_eval"]
    assert sorted((c["rank"], c["argv"][c["argv"].index("-i") + 1]) for c in evals) == [(0, "mid"), (0, "sft"), (1, "mid"), (1, "sft")]
    assert "phase report: done" in out and (storage / "report/report.md").is_file()

    second_handle = next(line.split("started run two: ")[1] for line in out.splitlines() if "started run two: " in line)
    listed = cli(env, "status", "--backend", "slurm")
    assert "succeeded  0" in listed.stdout and second_handle in listed.stdout, listed.stdout + listed.stderr
    logs = cli(env, "logs", second_handle)
    assert "[slurm] job" in logs.stdout and "[slurm] node agents exited with 0" in logs.stdout
    removed = cli(env, "down", second_handle)
    assert removed.returncode == 0 and f"removed {second_handle}" in removed.stdout, removed.stderr
    assert not list((tmp_path / "home/.nanochat-runner/slurm").glob(f"{second_handle.removeprefix('slurm://')}.*"))


def test_bare_mode_installs_the_runner_once_into_the_shared_home_and_rehearses_on_a_node(tmp_path, slurm_cluster, ssh_install_inputs):
    # No --runner-bin: the runner and nanochat (the double, uploaded with --nanochat-src) are installed offline from
    # the wheelhouse into the submit host's ~/.nanochat-runner, which the nodes share; the CPU rehearsal runs there.
    nanochat_src, wheelhouse = ssh_install_inputs
    preseed_files(tmp_path / "storage")
    env = base_env(tmp_path, {**slurm_cluster.env(), "HOME": str(tmp_path / "home")})
    for name in ("PYTHONPATH", "RUNNER_SCRATCH"):  # the nodes use what was installed, nothing of this checkout
        env.pop(name)
    args = ("--smoke", "--device", "cpu", "--nanochat-src", str(nanochat_src), "--wheelhouse", str(wheelhouse),
            "--storage", str(tmp_path / "storage"), "--scratch", str(tmp_path / "scratch"))
    first = up(env, *args, "--run-id", "bare")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert f"into {tmp_path}/home/.nanochat-runner (offline, from the uploaded wheelhouse)" in out
    assert f"{tmp_path}/home/.nanochat-runner/runner/" in (tmp_path / "home/.nanochat-runner/slurm/nanochat-bare.sbatch").read_text()
    assert "phase report: done" in out and "run bare: succeeded (exit 0)" in out
    assert (tmp_path / "storage/report/report.md").is_file()
    second = up(env, *args, "--run-id", "bare-2", "--detach")
    assert second.returncode == 0 and "install: nothing to do" in second.stderr, second.stderr[-3000:]
    assert cli(env, "down", second.stdout.strip(), "--grace", "5").returncode == 0
