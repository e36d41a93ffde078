"""The Modal backend's laptop side without Modal: the stages and their argv, the request and the dry run, the node's
variables from a `.env`, S3 endpoints Modal cannot reach, credentials, and the run record in storage (status over
finished and old runs, a rerun with --force/--from, down cancelling every recorded call, logs). The SDK's network
is never reached: FunctionCall and Volume are stand-ins with the real signatures (checked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from backends import modal_checks, modal_plan
from backends.base import BackendError, RunSpec
from backends.modal_backend import ModalBackend
from runner import markers
from runner.cli import main
from runner.plan import Plan, build_plan

modal = pytest.importorskip("modal")


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


def spec_for(model="d20", gpus=8, storage="modal://nano-vol/runs", **kw) -> RunSpec:
    return RunSpec(plan=build_plan("seed", model, gpus=gpus, run_id="r1"), storage=storage, **kw)


def stages(**kw):
    return {s.name: s for s in modal_plan.stages(spec_for(**kw))}


def test_cpu_phases_gpu_phases_and_the_report_each_on_their_own_machine():
    found = modal_plan.stages(spec_for())
    assert [(s.name, s.function) for s in found] == [("prep", "prep"), ("base", "gpu_phase"), ("mid", "gpu_phase"), ("sft", "gpu_phase"), ("report", "report")]
    assert found[0].phases == ("data", "tokenizer") and "gpu" not in found[0].options and "gpu" not in found[-1].options
    base = found[1]
    assert base.options["gpu"] == "H100!:8" and base.options["cpu"] >= 32 and base.options["memory"] >= 128 * 1024
    assert modal_plan.MIN_TIMEOUT_SEC <= base.options["timeout"] <= modal_plan.MODAL_CAP_SEC and base.segment_s == 0
    one = stages(gpus=1)["base"].options
    assert one["gpu"] == "H100!:1" and one["cpu"] < base.options["cpu"]  # sized by rank count
    assert modal_plan.gpu_string(build_plan("seed", "smoke", gpu_type="H200")) == "H200:1"


def test_a_phase_beyond_24h_runs_in_segments_counted_into_one_budget():
    found = modal_plan.stages(spec_for("d32", 1))
    base = next(s for s in found if s.name == "base")
    assert base.options["timeout"] == modal_plan.MODAL_CAP_SEC and base.segment_s == modal_plan.MODAL_CAP_SEC - modal_plan.SEGMENT_GRACE_SEC
    assert base.calls >= 10 and modal_plan.budget(found) == base.calls - 1 + modal_plan.SPARE_RETRIES
    assert modal_plan.budget(modal_plan.stages(spec_for())) == modal_plan.SPARE_RETRIES


def test_force_from_only_become_per_stage_commands_and_retries_continue():
    by_name = stages(from_phase="base", offline=True)
    assert "prep" not in by_name
    assert by_name["base"].node.argv()[-3:] == ["--offline", "--from", "base"] and "--from" not in by_name["base"].node.continuing().argv()
    assert by_name["mid"].node.from_phase == "mid" and by_name["report"].node.from_phase == "report"
    only = stages(only_phase="sft", fresh=True)
    assert list(only) == ["sft"] and only["sft"].node.only_phase == "sft" and only["sft"].node.fresh
    assert "--fresh" not in only["sft"].node.continuing().argv()
    # A retry follows a lost container whose lease in storage may still look fresh: it waits for it to expire
    # (5 heartbeats of 60 s), where a first call would be refused at once by a live holder.
    assert "--lease-wait" not in by_name["base"].node.argv()
    assert by_name["base"].node.continuing().argv()[-2:] == ["--lease-wait", "300"]
    forced = stages(force=True)
    assert forced["prep"].node.from_phase == "data" and forced["mid"].node.from_phase == "mid" and not forced["mid"].node.force


def test_sub_plans_keep_the_phase_keys_so_markers_still_match():
    plan = build_plan("seed", "d20", gpus=8, run_id="r1")
    full = markers.phase_keys(plan)
    for stage in modal_plan.stages(spec_for()):
        cut = Plan.from_dict(modal_plan.sub_plan(plan, stage.phases[-1]))
        assert cut.phase_names()[-1] == stage.phases[-1] and markers.phase_keys(cut) == {n: full[n] for n in cut.phase_names()}


def test_machine_options_of_owned_hosts_and_the_cpu_rehearsal_are_refused():
    for kw in ({"gpu_ids": "0,1"}, {"scratch": "/data"}):
        with pytest.raises(BackendError, match="Modal gives each stage its own"):
            ModalBackend().prepare(spec_for(**kw))
    rehearsal = RunSpec(plan=build_plan("seed", "smoke", gpus=1, run_id="r1", device="cpu"), storage="modal://v/x")
    with pytest.raises(BackendError, match="CPU rehearsal"):
        ModalBackend().prepare(rehearsal)


def test_storage_volume_mount_or_s3_and_nothing_else():
    assert modal_plan.node_storage("modal://nano-vol/runs/a") == ("/vol/nano-vol/runs/a", "nano-vol")
    assert modal_plan.node_storage("s3://bucket-1/x") == ("s3://bucket-1/x", None)
    with pytest.raises(BackendError, match="cannot be reached from a Modal container"):
        modal_plan.node_storage("/tmp/here")


def test_the_dockerfile_is_rendered_so_modal_accepts_its_copy_sources():
    from modal._utils.docker_utils import extract_copy_command_patterns
    from modal.exception import InvalidError

    from backends import modal_request

    app = modal_request.load_app_module()
    text = (modal_request.APP_MODULE.parents[1] / "Dockerfile").read_text()
    with pytest.raises(InvalidError, match="variables are not supported"):
        extract_copy_command_patterns(text.splitlines())  # why the Dockerfile is rendered first
    settings = modal_plan.image_settings(spec_for(), "ctx")
    assert settings["build_args"]["NANOCHAT_REF"] == build_plan("seed", "d20").commit and settings["build_args"]["RUNNER_UID"] == "0"
    patterns = extract_copy_command_patterns(app.render_dockerfile(text, settings["build_args"]).splitlines())
    assert "docker/empty" in patterns


def test_one_app_per_runner_version_and_image_not_per_run():
    one, other_run = spec_for(), RunSpec(plan=build_plan("seed", "d20", gpus=1, run_id="r2"), storage="modal://v/x")
    name = modal_plan.app_name(one, modal_plan.image_settings(one, "ctx"))
    assert name == modal_plan.app_name(other_run, modal_plan.image_settings(other_run, "ctx")) and "r1" not in name
    assert name.startswith(f"nanochat-runner-0.1.0-{one.plan.commit[:10]}")
    custom = spec_for(build_args={"BASE_IMAGE": "x"})
    assert modal_plan.app_name(custom, modal_plan.image_settings(custom, "ctx")) != name


DOTENV = """# compose settings: never for Modal
RUNNER_STORAGE=./storage
RUNNER_UID=1000
MODEL=d32
export WANDB_API_KEY="from-file"
HF_TOKEN=hf-file   # a comment
AWS_SECRET_ACCESS_KEY=aws-file
"""


def test_a_dotenv_gives_only_the_variables_the_node_needs(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(DOTENV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf-shell")
    for name in ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert modal_checks.node_env(spec_for(env={"X": "1"})) == {"WANDB_API_KEY": "from-file", "HF_TOKEN": "hf-shell", "X": "1"}
    assert modal_checks.node_env(spec_for(storage="s3://bucket-1/x"))["AWS_SECRET_ACCESS_KEY"] == "aws-file"
    request = ModalBackend().prepare(spec_for()).request
    assert request.run["env_names"] == ["HF_TOKEN", "WANDB_API_KEY"] and "RUNNER_UID" not in json.dumps(request.run)
    assert "python-dotenv" not in sys.modules and "dotenv" not in sys.modules


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "http://localhost:9000", "http://10.1.2.3", "http://192.168.0.5:9000", "http://[::1]:8333"])
def test_s3_endpoints_modal_cannot_reach_are_refused(endpoint, monkeypatch):
    with pytest.raises(BackendError, match="Modal's machines cannot reach it"):
        ModalBackend().prepare(spec_for(storage="s3://bucket-1/x", storage_options=[f"endpoint_url={endpoint}"]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(BackendError, match="loopback|private"):
        ModalBackend().prepare(spec_for(storage="s3://bucket-1/x"))


def test_a_public_s3_endpoint_passes():
    modal_checks.check_s3_endpoint("https://s3.us-east-1.amazonaws.com")
    modal_checks.check_s3_endpoint("http://52.216.8.1:9000")


def test_dry_run_prints_what_is_deployed_and_called_and_names_only(token):
    result = CliRunner().invoke(main, ["up", "--backend", "modal", "--model", "d20", "--storage", "modal://nano-vol/runs", "--run-id", "r1", "--dry-run"],
                                env={"WANDB_API_KEY": "secret-wandb", "HF_TOKEN": "secret-hf"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("modal app nanochat-runner-0.1.0-", "Function.from_name(", "'driver').spawn(run)", "non-preemptible",
                 "gpu_phase.with_options(gpu='H100!:8'", "report.with_options(cpu=2.0", "first call: runner node run --storage /vol/nano-vol/runs --run-id r1",
                 "Secret.from_dict(HF_TOKEN, WANDB_API_KEY)", "NANOCHAT_REF=", "handle: modal://r1@modal://nano-vol/runs", "retry budget for the whole run: 3"):
        assert text in out, text
    assert "secret-" not in out


def test_secrets_environment_and_the_saved_request(token, tmp_path, monkeypatch):
    monkeypatch.setenv("MODAL_ENVIRONMENT", "staging")
    backend = ModalBackend()
    backend.configure(secrets=("hf", "wandb"), modal_retries=5, save_request=str(tmp_path / "run.json"))
    prepared = backend.prepare(spec_for())
    assert prepared.request.environment == "staging" == prepared.request.run["environment"]
    assert prepared.request.run["secrets"] == ["hf", "wandb"] and prepared.request.run["budget"] == 5
    assert "Secret.from_name('hf'); Secret.from_name('wandb')" in str(prepared) and "in environment staging" in str(prepared)
    backend.configure(modal_env="prod")
    assert backend.prepare(spec_for()).request.environment == "prod"
    saved = json.loads(prepared.request.saved())
    assert saved["stages"][1]["job"]["argv"][:2] == ["node", "run"] and "env" not in saved


@pytest.mark.parametrize("args", [["up", "--backend", "modal", "--smoke", "--storage", "modal://v/x"], ["logs", "modal://r1@modal://v/x"],
                                  ["status", "modal://r1@modal://v/x"], ["down", "modal://r1@modal://v/x"]])
def test_no_credentials_is_the_first_error_with_the_fix(monkeypatch, args):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_OAUTH_REFRESH_TOKEN", "MODAL_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("modal.config.config.get", lambda key, *a, **k: None)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "No Modal token" in result.output and "modal token new" in result.output and "Traceback" not in result.output


CHECK = "from runner.modal_fs import sdk_problem; print(sdk_problem())"


def _sdk_problem_with(tmp_path, env: dict[str, str], config: str | None = None) -> str:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MODAL_")}
    if config is not None:
        (tmp_path / "modal.toml").write_text(config)
        clean["MODAL_CONFIG_PATH"] = str(tmp_path / "modal.toml")
    out = subprocess.run([sys.executable, "-c", CHECK], env={**clean, "HOME": str(tmp_path), **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_token_file_and_oauth_credentials_are_both_accepted(tmp_path):
    assert _sdk_problem_with(tmp_path, {}, "[default]\ntoken_id = 'ak-1'\ntoken_secret = 'as-1'\nactive = true\n") == "None"
    oauth = {"MODAL_OAUTH_REFRESH_TOKEN": "rt", "MODAL_OAUTH_CLIENT_ID": "cid", "MODAL_OAUTH_CLIENT_SECRET": "cs"}
    assert _sdk_problem_with(tmp_path, oauth) == "None"
    assert _sdk_problem_with(tmp_path, {}, "[default]\noauth_refresh_token = 'rt'\noauth_client_id = 'c'\noauth_client_secret = 's'\n") == "None"
    assert "No Modal token" in _sdk_problem_with(tmp_path, {"MODAL_TOKEN_ID": "ak-only"})


def test_a_missing_sdk_is_the_first_error(monkeypatch):
    from backends.modal_backend import require_modal

    monkeypatch.setitem(sys.modules, "modal.config", None)
    with pytest.raises(BackendError, match="Modal SDK is not installed"):
        require_modal()


def test_the_up_options_configure_the_backend():
    """backends/modal_options.py as `runner up` wires it: repeatable --secret, --modal-env, --modal-retries."""
    import click

    from backends.modal_options import MODAL_KEYS, modal_options

    seen = {}

    @click.command()
    @modal_options
    def up(**params):
        backend = ModalBackend()
        backend.configure(**{key: params.pop(key, None) for key in MODAL_KEYS})
        seen.update(vars(backend.options))

    result = CliRunner().invoke(up, ["--secret", "hf", "--secret", "wandb", "--modal-env", "prod", "--modal-retries", "2"])
    assert result.exit_code == 0, result.output
    assert seen == {"secrets": ("hf", "wandb"), "modal_env": "prod", "spare_retries": 2, "save_request": None}
