"""Multi-GPU phases go through torchrun: one process per GPU, one optimizer shard per rank in storage."""

from __future__ import annotations

import importlib.util

import pytest

from harness import base_env, make_double, node_run, preseed_files, read_calls

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (tests/run.sh installs the CPU wheel where there is one)")


def test_two_gpu_plan_launches_two_ranks_and_keeps_every_shard(tmp_path):
    # --device cuda: the double stands in for CUDA ranks (gloo), so this runs the same on a machine without GPUs.
    storage, double, env = tmp_path / "storage", make_double(tmp_path), base_env(tmp_path)
    preseed_files(storage)
    for phase in ("data", "tokenizer", "base"):
        result = node_run(str(storage), double, env, "--gpus", "2", "--device", "cuda", "--only", phase)
        assert result.code == 0, result.output
    train = [c for c in read_calls(tmp_path / "calls.jsonl") if c["module"] == "scripts.base_train"]
    assert sorted((c["rank"], c["world_size"]) for c in train) == [(0, 2), (1, 2)]
    assert "--total_batch_size=2048" in train[0]["argv"]  # the smoke batch scales with the GPU count
    names = {p.name for p in (storage / "base_checkpoints" / "d4").iterdir()}
    assert {"optim_000020_rank0.pt", "optim_000020_rank1.pt", "model_000020.pt"} <= names
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m scripts.base_train -- --depth=4" in result.output
