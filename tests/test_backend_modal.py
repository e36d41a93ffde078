"""The Modal backend without Modal: what it hands the SDK (stages, GPUs, timeouts, retries, volumes, secrets,
image build args), the phase split, the in-container stage (commits, segments) with a stand-in `runner`, and the
errors when the SDK or a token is missing. Modal's network is never reached: the app is only defined, and the
SDK calls that would talk to Modal (Dict, FunctionCall, Volume) are replaced by stand-ins."""

from __future__ import annotations

import os
import stat
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from backends import modal_backend, modal_plan, modal_remote
from backends.base import BackendError, RunSpec, State
from runner import markers
from runner.cli import main
from runner.plan import Plan, build_plan

modal = pytest.importorskip("modal")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.setattr("modal.config.config.get", lambda key, *a, **k: None)
    for name in ("deploy", "run"):  # nothing may get as far as talking to Modal
        monkeypatch.setattr(modal.App, name, lambda *a, **k: pytest.fail("reached Modal"))


def spec_for(model="d20", gpus=8, storage="modal://nano-vol/runs", node_args=(), **kw) -> RunSpec:
    return RunSpec(plan=build_plan("seed", model, gpus=gpus, run_id="r1"), storage=storage, node_args=list(node_args), **kw)


def test_stages_split_cpu_from_gpu_and_pin_the_gpu():
    plan = build_plan("seed", "d20", gpus=8, run_id="r1")
    stages = modal_plan.stages(plan)
    assert [s.name for s in stages] == ["prep", "phase-base", "phase-mid", "phase-sft", "phase-report"][: len(stages)]
    assert stages[0].phases == ["data", "tokenizer"] and stages[0].gpu is None
    assert all(s.gpu == "H100!:8" for s in stages[1:])
    base = stages[1]
    assert modal_plan.MIN_TIMEOUT_SEC <= base.timeout_s <= modal_plan.MODAL_CAP_SEC and base.segment_s == 0
    assert base.timeout_s >= base.est_hours * 3600 * modal_plan.MARGIN
    assert modal_plan.gpu_string(build_plan("seed", "smoke", gpu_type="H200")) == "H200:1"


def test_a_phase_beyond_24h_runs_in_resumable_segments():
    stages = modal_plan.stages(build_plan("seed", "d32", gpus=1, run_id="r"))
    base = next(s for s in stages if s.phases == ["base"])
    assert base.timeout_s == modal_plan.MODAL_CAP_SEC and base.segment_s == modal_plan.MODAL_CAP_SEC - modal_plan.SEGMENT_GRACE_SEC
    assert base.calls >= 2 and all(s.timeout_s <= modal_plan.MODAL_CAP_SEC for s in stages)


def test_sub_plans_keep_the_phase_keys_so_markers_still_match():
    plan = build_plan("seed", "d20", gpus=8, run_id="r1")
    full = markers.phase_keys(plan)
    for stage in modal_plan.stages(plan):
        cut = Plan.from_dict(modal_plan.sub_plan(plan, stage.phases[-1]))
        assert cut.phase_names()[-1] == stage.phases[-1]
        assert markers.phase_keys(cut) == {n: full[n] for n in cut.phase_names()}


def test_from_only_force_apply_once_per_stage():
    plan = build_plan("seed", "d20", gpus=8, run_id="r1")
    by_name = {s.name: s for s in modal_plan.stages(plan, ["--offline", "--from", "base"])}
    assert "prep" not in by_name
    assert by_name["phase-base"].node_args == ["--from", "base", "--offline"] and by_name["phase-base"].continue_args == ["--offline"]
    assert by_name["phase-mid"].node_args[:2] == ["--from", "mid"]
    only = modal_plan.stages(plan, ["--only", "sft"])
    assert [s.name for s in only] == ["phase-sft"] and only[0].node_args == ["--only", "sft"]
    assert modal_plan.stages(plan, ["--force"])[0].node_args == ["--from", "data"]


def test_storage_volume_mount_or_s3_and_nothing_else():
    assert modal_plan.node_storage("modal://nano-vol/runs/a") == ("/vol/nano-vol/runs/a", "nano-vol")
    assert modal_plan.node_storage("s3://bucket-1/x") == ("s3://bucket-1/x", None)
    with pytest.raises(BackendError, match="cannot be reached from a Modal container"):
        modal_plan.node_storage("/tmp/here")


def test_the_same_dockerfile_rendered_so_modal_accepts_its_copy_sources():
    from modal._utils.docker_utils import extract_copy_command_patterns
    from modal.exception import InvalidError

    text = (REPO / "Dockerfile").read_text()
    with pytest.raises(InvalidError, match="variables are not supported"):
        extract_copy_command_patterns(text.splitlines())  # why the Dockerfile is rendered first
    args = modal_plan.image_build_args(spec_for())
    assert args["NANOCHAT_REF"] == build_plan("seed", "d20").commit and args["RUNNER_UID"] == "0"
    rendered = modal_plan.render_dockerfile(text, args)
    patterns = extract_copy_command_patterns(rendered.splitlines())
    assert "docker/empty" in patterns and all((REPO / p).exists() for p in patterns)
    assert [ln for ln in rendered.splitlines() if not ln.startswith("COPY")] == [ln for ln in text.splitlines() if not ln.startswith("COPY")]


def test_function_specs_gpu_timeouts_retries_volumes_secrets(token, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-wandb")
    monkeypatch.setenv("RUNNER_MODAL_SECRETS", "hf, other")
    specs = {f["name"]: f for f in modal_backend.function_specs(spec_for())}
    base = specs["phase-base"]
    assert base["gpu"] == "H100!:8" and base["volumes"] == {"/vol/nano-vol": "nano-vol"} and base["retries"]["max_retries"] >= 3
    assert base["secrets"]["env"] == ["WANDB_API_KEY"] and base["secrets"]["named"] == ["hf", "other"]
    assert "gpu" not in specs["prep"] and specs["prep"]["cpu"] >= 4 and "gpu" not in specs["driver"]
    payload = base["payload"]
    assert payload["storage"] == "/vol/nano-vol/runs" and payload["volume"] == "nano-vol" and "secret-wandb" not in str(payload)


def test_the_app_is_defined_offline_with_the_real_sdk(token, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-wandb")
    seen = {}
    real = modal.Image.from_dockerfile

    def from_dockerfile(path, **kwargs):
        seen.update(kwargs, text=Path(path).read_text())
        return real(path, **kwargs)

    monkeypatch.setattr(modal.Image, "from_dockerfile", from_dockerfile)
    app = modal_backend.build_app(spec_for())
    with warnings.catch_warnings():  # deprecated in modal 1.6 with no public replacement yet; only read here
        warnings.simplefilter("ignore")
        names = set(app.registered_functions)
    assert names == {"prep", "phase-base", "phase-mid", "phase-sft", "phase-report", "driver"} - ({"phase-report"} - {s.name for s in modal_plan.stages(spec_for().plan)})
    assert seen["build_args"]["RUNNER_UID"] == "0" and seen["context_dir"] == str(REPO) and seen["add_python"] == "3.11"
    assert "${WHEELHOUSE" not in "\n".join(ln for ln in seen["text"].splitlines() if ln.startswith("COPY"))


def test_stage_functions_unpickle_where_this_repository_is_not_importable(token, tmp_path):
    """Modal's Python in the image has only the standard library and modal: the serialized functions must not
    refer to `backends` or `runner` by name."""
    import subprocess
    import types

    from modal._serialization import serialize
    from modal._vendor import cloudpickle

    modal_backend.build_app(spec_for())  # registers the module for pickling by value
    target = modal_remote.stage_entry
    copy = types.FunctionType(target.__code__, target.__globals__, "phase_base", target.__defaults__)
    blob = tmp_path / "fn.pkl"
    blob.write_bytes(serialize(copy))
    code = (f"import sys; sys.path = [p for p in sys.path if p not in ('', '.', {str(REPO)!r})]\n"
            "import pickle; f = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "assert 'backends' not in sys.modules and 'runner' not in sys.modules, sorted(sys.modules)\n"
            "print(f.__name__, f.__code__.co_varnames[:2])")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "phase_base ('payload', 'first_call')" in out.stdout
    assert cloudpickle  # the serializer Modal uses


def test_dry_run_shows_stages_and_secret_names_only(token):
    result = CliRunner().invoke(main, ["up", "--backend", "modal", "--model", "d20", "--storage", "modal://nano-vol/runs", "--run-id", "r1", "--dry-run"],
                                env={"WANDB_API_KEY": "secret-wandb", "HF_TOKEN": "secret-hf"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("app nanochat-r1", "H100!:8", "phase-base", "NANOCHAT_REF=", "HF_TOKEN, WANDB_API_KEY", "handle: modal://r1", "/vol/nano-vol/runs"):
        assert text in out, text
    assert "secret-" not in out


@pytest.mark.parametrize("args", [["up", "--backend", "modal", "--smoke", "--storage", "modal://v/x"], ["logs", "modal://r1"], ["status", "modal://r1"], ["down", "modal://r1"]])
def test_no_token_is_the_first_error_with_the_fix(no_token, args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "No Modal token" in result.output and "modal token new" in result.output and "Traceback" not in result.output


def test_missing_sdk_is_the_first_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "modal.config", None)
    with pytest.raises(BackendError, match="Modal SDK is not installed"):
        modal_backend.require_modal()


class FakeCall:
    results: dict = {}
    cancelled: list = []

    def __init__(self, call_id):
        self.object_id = call_id

    @classmethod
    def from_id(cls, function_call_id, client=None):
        return cls(function_call_id)

    def get(self, timeout=None, *, index=0):
        outcome = self.results.get(self.object_id)
        if outcome is None:
            raise TimeoutError()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def cancel(self, terminate_containers=False):
        self.cancelled.append((self.object_id, terminate_containers))


def test_describe_list_and_cancel_by_handle(token, monkeypatch):
    import inspect

    for name in ("from_id", "get", "cancel"):  # the stand-in keeps the SDK's signatures
        real = [p for p in inspect.signature(getattr(modal.FunctionCall, name)).parameters if p != "cls"]
        assert [p for p in inspect.signature(getattr(FakeCall, name)).parameters if p != "cls"] == real
    runs = {"r1": {"call_id": "fc-1", "storage": "modal://v/x", "started_at": "2026-01-01T00:00:00", "app_name": "nanochat-r1"},
            "r2": {"call_id": "fc-2", "storage": "modal://v/x", "started_at": "2026-01-02T00:00:00"}}
    monkeypatch.setattr(modal.Dict, "from_name", lambda *a, **k: runs)
    monkeypatch.setattr(modal.FunctionCall, "from_id", FakeCall.from_id)
    FakeCall.results = {"fc-2": {"exit_code": 0}}
    backend = modal_backend.ModalBackend()
    assert backend.describe("modal://r1").state == State.RUNNING
    assert backend.describe("r2").state == State.SUCCEEDED and backend.describe("r2").exit_code == 0
    assert [i.run_id for i in backend.list_runs()] == ["r1", "r2"]
    info = backend.cancel("modal://r1")
    assert FakeCall.cancelled == [("fc-1", True)] and runs["r1"]["cancelled"]
    FakeCall.results["fc-1"] = RuntimeError("cancelled")
    assert backend.describe("modal://r1").state == State.CANCELLED and info.run_id == "r1"
    with pytest.raises(BackendError, match="No Modal run 'nope'"):
        backend.describe("modal://nope")


def test_stage_commits_the_volume_and_ends_a_segment_to_continue(tmp_path, monkeypatch):
    """The in-container stage with a stand-in `runner` that trains until stopped: SIGTERM at the segment's end,
    exit 130 means "call again", and the Volume is committed periodically and once after the node exits."""
    fake = tmp_path / "bin/runner"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$ARGS_FILE\"\ntrap 'exit 130' TERM\nwhile true; do sleep 0.05; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ARGS_FILE", str(tmp_path / "args"))
    commits = []

    class Vol:
        def commit(self):
            commits.append(1)

    record: dict = {}
    monkeypatch.setattr(modal.Volume, "from_name", lambda *a, **k: Vol())
    monkeypatch.setattr(modal.Dict, "from_name", lambda *a, **k: record)
    payload = modal_plan.payload(spec_for(node_args=["--from", "base"]), modal_plan.stages(spec_for().plan, ["--from", "base"])[0], "/vol/v/x", "v")
    payload.update(segment_s=0.6, commit_every_s=0.2)
    result = modal_remote.run_stage(payload)
    assert result == {"exit_code": 130, "continue": True}
    assert len(commits) >= 2 and "--from base" in (tmp_path / "args").read_text()
    again = modal_remote.run_stage(payload)  # a Modal retry of the same input: --from must not restart training
    assert again["continue"] and "--from" not in (tmp_path / "args").read_text()
    assert "--storage /vol/v/x --run-id r1" in (tmp_path / "args").read_text()
