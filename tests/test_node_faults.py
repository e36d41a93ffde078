"""Faults the node agent must turn into a clear stop: a shard missing from storage (nanochat would silently train
on fewer and validate on the wrong one), and a disk that fills up in the middle of a phase (status failed, the fix,
no traceback)."""

from __future__ import annotations

import errno
import json
import sys

import pytest
from harness import base_env, make_double, node_run, preseed_files
from runner.context import DiskFull


def test_a_shard_deleted_from_storage_stops_training_and_names_it(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    assert node_run(str(storage), double, base_env(tmp_path), "--only", "data").code == 0
    assert node_run(str(storage), double, base_env(tmp_path), "--only", "tokenizer").code == 0
    (storage / "base_data/shard_00002.parquet").unlink()
    fresh = base_env(tmp_path, {"RUNNER_SCRATCH": str(tmp_path / "fresh-scratch")})  # another node: nothing cached
    result = node_run(str(storage), double, fresh, "--only", "base")
    assert result.code == 4, result.output
    assert "needs the plan's 4 shards, but in storage 1 of 4 shards are missing (first: shard_00002.parquet)" in result.output
    assert "--only data" in result.output and "Traceback" not in result.output
    offline = node_run(str(storage), double, fresh, "--only", "base", "--offline")  # air-gapped on purpose: said, not fatal
    assert offline.code == 0 and "--offline: phase base runs on the shards storage has" in offline.output


def test_a_disk_that_fills_up_mid_phase_fails_the_run_with_the_fix(tmp_path, monkeypatch):
    from runner import node
    from runner.node import NodeOptions, run_node
    from runner.plan import build_plan

    storage = tmp_path / "storage"
    preseed_files(storage)
    plan = build_plan("seed", "smoke", run_id="full")

    def run_phase(self, phase, steps, marker):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "scratch/base/x"))

    monkeypatch.setattr(node.NodeAgent, "run_phase", run_phase)
    options = NodeOptions(storage=str(storage), nanochat_dir=str(make_double(tmp_path)), python=sys.executable,
                          scratch=str(tmp_path / "scratch"), run_id="full")
    with pytest.raises(DiskFull, match="The disk filled up while running phase") as full:
        run_node(plan, options)
    assert "Free space on that disk" in str(full.value) and full.value.exit_code == 6
    status = json.loads((storage / "_runner/runs/full/status.json").read_text())
    assert status["state"] == "failed" and "No space left" in status["error"]
