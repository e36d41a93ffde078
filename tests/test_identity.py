"""A phase's identity: what it makes, never how it runs. Keys hash the recipe's identity placeholders only, so a W&B
run name, a checkpoint interval, a device batch or a GPU count never reruns a finished phase, while a change in
what the phase makes (depth, data ratio, shards) does."""

from __future__ import annotations

import sys

import backends
from backends.base import Backend, Prepared
from click.testing import CliRunner
from harness import base_env, make_double, node_run, preseed_files, read_calls, runner
from runner.cli import main
from runner.markers import phase_keys
from runner.plan import Plan, build_plan


def keys(**kw):
    return phase_keys(build_plan(**{"recipe_name": "seed", "model": "d20", "gpus": 8, **kw}))


def test_runtime_values_leave_every_key_alone():
    reference = keys()
    assert keys(wandb_run="some-run-name") == reference
    assert keys(checkpoint_every_min=5.0) == reference  # another --save_every
    assert keys(gpu_type="H200") == reference  # another device batch (32 instead of 16)
    assert keys(gpus=4) == reference  # another GPU count: the same total batch, the same model
    plan = build_plan("seed", "d20", gpus=8, wandb_run="x", checkpoint_every_min=5.0)
    base_train = plan.phase("base").steps[0]
    assert "--run=x" in base_train.args and "--run={wandb_run}" in base_train.identity
    assert "--save_every={save_every}" in base_train.identity


def test_what_a_phase_makes_changes_its_key_and_everything_after_it():
    reference, deeper = keys(), keys(model="d26")
    assert deeper["data"] != reference["data"]  # more shards
    assert all(deeper[name] != reference[name] for name in ("base", "mid", "sft"))
    latest = phase_keys(build_plan("latest", "d24", gpus=8, gpu_type="H100"))
    assert latest == phase_keys(build_plan("latest", "d24", gpus=8, gpu_type="H200"))  # both take --fp8
    assert latest != phase_keys(build_plan("latest", "d24", gpus=8, gpu_type="A100-80GB"))  # no --fp8: another model


def test_a_version_1_plan_still_loads():
    raw = build_plan("seed", "smoke").to_dict()
    raw["version"] = 1
    for phase in raw["phases"]:
        for key in ("hardware", "cost", "chat_source"):
            phase.pop(key)
        for step in phase["steps"]:
            step.pop("identity")
    plan = Plan.from_dict(raw)
    assert plan.phase("mid").chat_source == "mid" and plan.phase("data").hardware == "cpu"


def test_with_a_wandb_key_a_second_node_run_skips_every_finished_phase(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    env = base_env(tmp_path, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"})
    args = ["node", "run", "--storage", str(storage), "--model", "smoke", "--nanochat-dir", str(double), "--python"]
    first = node_run(str(storage), double, env)
    assert first.code == 0, first.output
    trained = len(read_calls(tmp_path / "calls.jsonl"))
    # No --run-id: a new run id, so a new W&B name; and another checkpoint interval.
    second = runner([*args, sys.executable, "--checkpoint-every-min", "1"], env)
    assert second.code == 0, second.output
    assert second.output.count("), skipping") == 6, second.output
    assert len(read_calls(tmp_path / "calls.jsonl")) == trained  # nanochat was not started again


class RecordingBackend(Backend):
    """Stands in for a backend: records the spec `runner up` built, launches nothing."""

    name = "recording"
    specs: list = []

    def prepare(self, spec):
        self.specs.append(spec)
        return Prepared(spec, ("recorded",), None)

    def preflight(self, prepared, log):
        raise AssertionError("a dry run must not preflight")

    def launch(self, prepared):
        raise AssertionError("a dry run must not launch")

    def describe(self, handle):
        raise NotImplementedError

    def list_runs(self):
        return []

    def logs(self, handle, follow=False, tail=None):
        return iter(())

    def cancel(self, handle, grace_sec=60.0):
        raise NotImplementedError


def test_up_with_a_run_id_twice_gives_the_same_keys_and_names_the_wandb_run(monkeypatch):
    RecordingBackend.specs = []
    monkeypatch.setattr(backends, "get_backend", lambda name: RecordingBackend())
    for _ in range(2):
        result = CliRunner().invoke(main, ["up", "--model", "d20", "--storage", "/tmp/x", "--run-id", "my-run", "--dry-run"],
                                    env={"WANDB_API_KEY": "k"})
        assert result.exit_code == 0, result.output
    first, second = (spec.plan for spec in RecordingBackend.specs)
    assert phase_keys(first) == phase_keys(second)
    assert first.run_id == "my-run" and first.wandb_run == "my-run"
    assert "--run=my-run" in first.phase("base").steps[0].args
