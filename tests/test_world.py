"""Plans for several nodes: the world size, the device batch and gradient accumulation derived for it, refusals of a
world that cannot divide nanochat's batch, and where a node agent learns its place (flags, Slurm, torchrun)."""

from __future__ import annotations

import re

import pytest
from harness import base_env, runner

from runner.errors import PlanError
from runner.plan import build_plan
from runner.rendezvous import resolve


@pytest.mark.parametrize("nodes, gpus, device_batch, accumulation", [(1, 8, 16, 2), (2, 8, 16, 1), (4, 8, 8, 1), (2, 4, 16, 2), (16, 8, 2, 1), (32, 8, 1, 1)])
def test_the_device_batch_divides_the_total_batch_at_every_world_size(nodes, gpus, device_batch, accumulation):
    plan = build_plan("seed", "d20", gpus=gpus, nodes=nodes)
    assert plan.world_size == nodes * gpus
    assert (plan.shape["device_batch_size"], plan.shape["grad_accum_steps"]) == (device_batch, accumulation)
    assert plan.shape["total_batch_tokens"] == device_batch * accumulation * 2048 * nodes * gpus
    base_train = plan.phase("base").steps[0]
    assert f"--device_batch_size={device_batch}" in base_train.args and base_train.all_gpus


def test_a_world_that_cannot_divide_the_batch_is_refused_with_the_reason(tmp_path):
    result = runner(["plan", "--nodes", "3", "--gpus", "8"], base_env(tmp_path))
    assert result.code == 1, result.output
    assert "24 processes cannot share nanochat's total batch of 524,288 tokens" in result.output
    assert "not a multiple of 49,152" in result.output and "power of two" in result.output
    with pytest.raises(PlanError, match="512 processes cannot share"):
        build_plan("seed", "d20", gpus=8, nodes=64)


def test_runner_plan_shows_world_size_batch_hours_and_dollars_for_several_nodes(tmp_path):
    one = runner(["plan", "--gpus", "8"], base_env(tmp_path))
    two = runner(["plan", "--gpus", "8", "--nodes", "2"], base_env(tmp_path))
    assert two.code == 0, two.output
    assert "2 nodes × 8× H100 (16 GPUs)" in two.output
    assert "world size 16 (2 node(s) × 8 GPUs); device batch 16, gradient accumulation 1" in " ".join(two.output.split())
    assert "world size 8 (1 node(s) × 8 GPUs); device batch 16, gradient accumulation 2" in " ".join(one.output.split())
    assert "torchrun --nnodes=2 --node_rank=R --nproc_per_node=8" in two.output

    def base_hours(output: str) -> float:
        return float(next(line for line in output.splitlines() if line.startswith("│ base ")).split("│")[4])

    assert base_hours(two.output) < base_hours(one.output)  # twice the GPUs: about half the hours


def test_a_world_size_changes_what_a_phase_makes_but_the_same_world_does_not():
    from runner.markers import phase_keys

    one_node = phase_keys(build_plan("seed", "smoke", gpus=2, device="cuda"))
    two_nodes = phase_keys(build_plan("seed", "smoke", gpus=1, nodes=2, device="cuda"))
    four = phase_keys(build_plan("seed", "smoke", gpus=4, device="cuda"))
    assert one_node == two_nodes  # 1 × 2 and 2 × 1 GPUs: the same world, the same checkpoints
    assert one_node["base"] != four["base"] and one_node["tokenizer"] == four["tokenizer"]


def test_the_node_learns_its_place_from_flags_slurm_or_torchrun():
    flags = resolve(2, 1, "10.0.0.1:29400", "job-7", env={})
    assert (flags.nnodes, flags.node_rank, flags.master, flags.launch_id, flags.is_leader) == (2, 1, "10.0.0.1:29400", "job-7", False)
    slurm = resolve(env={"SLURM_NNODES": "4", "SLURM_NODEID": "3", "SLURM_JOB_ID": "123", "MASTER_ADDR": "n1", "MASTER_PORT": "29501"})
    assert (slurm.nnodes, slurm.node_rank, slurm.master, slurm.launch_id) == (4, 3, "n1:29501", "123.0")
    requeued = resolve(env={"SLURM_NNODES": "4", "SLURM_NODEID": "0", "SLURM_JOB_ID": "123", "SLURM_RESTART_COUNT": "2", "MASTER_ADDR": "n1"})
    assert requeued.launch_id == "123.2"  # a requeued job is a new launch
    torchrun = resolve(env={"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "h0", "PET_MASTER_PORT": "1234", "RUNNER_LAUNCH_ID": "a"})
    assert (torchrun.master, torchrun.is_leader) == ("h0:1234", True)
    assert torchrun.torchrun_args(8) == ["--nnodes=2", "--node_rank=0", "--nproc_per_node=8", "--master_addr=h0", "--master_port=1234"]
    assert resolve(env={}).torchrun_args(8) == ["--standalone", "--nproc_per_node=8"]


@pytest.mark.parametrize("kwargs, message", [
    ({"nnodes": 2, "node_rank": 0, "launch_id": "x"}, "2 nodes need the master's address"),
    ({"nnodes": 2, "node_rank": 0, "master": "h:1"}, "2 nodes need a launch id"),
    ({"nnodes": 2, "node_rank": 2, "master": "h:1", "launch_id": "x"}, "--node-rank 2 is not a rank of 2 node(s)"),
    ({"nnodes": 2, "node_rank": 0, "master": "h:port", "launch_id": "x"}, "is not ADDR:PORT"),
])
def test_a_node_that_cannot_meet_the_others_is_refused(kwargs, message):
    with pytest.raises(PlanError, match=re.escape(message)):
        resolve(**kwargs, env={})


def test_a_backend_of_one_node_refuses_several(tmp_path):
    result = runner(["up", "--backend", "local", "--nodes", "2", "--dry-run"], base_env(tmp_path))
    assert result.code == 2 and "--backend local runs one node; this plan has 2 (--nodes)" in result.output


def test_the_rehearsal_is_one_machine():
    with pytest.raises(PlanError, match="runs on this machine alone, not on 2 nodes"):
        build_plan("seed", "smoke", nodes=2, device="cpu")
