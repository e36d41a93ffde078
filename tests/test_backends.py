"""The backend layer without an engine: the registry, `runner up --dry-run`, input errors, and the preflight
verdicts on what a GPU probe could print on a real GPU box (where nvidia-smi is mounted into the container)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from backends import REGISTRY, backend_for, get_backend
from backends.base import BackendError, PreflightError, State, state_from_exit
from backends.preflight import disk_need, probe_verdict
from runner.cli import main
from runner.plan import build_plan

NVIDIA_SMI_4 = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}abc)" for i in range(4))


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


# Backends registered by name but not built yet; each must answer with what to do instead.
PLANNED = [n for n, target in REGISTRY.items() if target is None] or [pytest.param("-", marks=pytest.mark.skip(reason="every backend is available"))]


@pytest.mark.parametrize("name", PLANNED)
def test_planned_backends_answer_with_what_to_do_instead(name, tmp_path):
    result = invoke("up", "--backend", name, "--smoke", "--storage", str(tmp_path))
    assert result.exit_code == 1
    assert f"The {name} backend is not available yet" in result.output and "To fix:" in result.output
    assert "Traceback" not in result.output


def test_unknown_backend_and_unknown_scheme():
    with pytest.raises(BackendError, match="Unknown backend 'k8s'"):
        get_backend("k8s")
    for name in [n for n, target in REGISTRY.items() if target is None]:
        with pytest.raises(BackendError, match="not available yet"):
            backend_for(f"{name}://some-run")
    backend, handle = backend_for("seed-smoke-1gpu-x")
    assert backend.name == "local" and handle == "local://seed-smoke-1gpu-x"


def test_dry_run_shows_the_container_and_hides_secret_values(tmp_path):
    env = {"WANDB_API_KEY": "secret-wandb", "AWS_SECRET_ACCESS_KEY": "secret-aws", "DOCKER_HOST": "unix:///nowhere.sock"}
    result = invoke("up", "--backend", "local", "--smoke", "--storage", str(tmp_path / "s"), "--run-id", "dry", "--gpu-ids", "2", "-e", "EXTRA=x", "--dry-run", env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    # Device 2 (not a count of 2): docker reads --gpus as CSV, so a device list is quoted as the launch gets it.
    assert "docker run --detach --name nanochat-dry --init --ipc=host '--gpus=\"device=2\"'" in out
    assert f"--volume={tmp_path / 's'}:/storage" in out and "--env=WANDB_API_KEY" in out and "--env=EXTRA" in out
    assert "node run --storage /storage --run-id dry" in out and "handle: local://nanochat-dry" in out
    assert "secret" not in out
    assert "AWS_SECRET_ACCESS_KEY" not in out  # S3 credentials go only to s3:// runs


def test_s3_storage_passes_through_with_credentials_and_loopback_gets_host_networking():
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:8333"}
    result = invoke("up", "--backend", "local", "--model", "d20", "--storage", "s3://bucket-1/run", "--run-id", "s3run", "--dry-run", env=env)
    assert result.exit_code == 0, result.output
    assert "--gpus=8" in result.output and "--network=host" in result.output
    assert "--env=AWS_ACCESS_KEY_ID --env=AWS_SECRET_ACCESS_KEY --env=AWS_ENDPOINT_URL" in result.output
    assert "--volume" not in result.output and "--user" not in result.output
    assert "node run --storage s3://bucket-1/run --run-id s3run" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--storage", "memory://x"], "memory:// storage lives inside one process"),
        (["--storage", "/tmp/x", "--gpu-ids", "0,1"], "--gpu-ids names 2 device(s) but the plan runs on 1"),
        (["--storage", "/tmp/x", "--model", "d20"], "--smoke is the smoke model"),
        (["--storage", "/tmp/x", "-e", "NOT_SET_ANYWHERE_1234"], "NOT_SET_ANYWHERE_1234 is not set in this shell"),
        (["--storage", "/tmp/x", "--build-arg", "NOVALUE"], "is not KEY=VALUE"),
    ],
)
def test_bad_up_input_is_a_message_with_a_fix(args, message):
    result = invoke("up", "--backend", "local", "--smoke", "--dry-run", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "To fix:" in result.output


def test_disk_need_counts_shards_checkpoints_and_preseeded_files():
    need = disk_need(build_plan("seed", "d20", gpus=8))
    assert 20e9 < need["shards"] < 25e9  # 240 shards of about 95 MB
    assert 10e9 < need["checkpoints"] < 20e9  # 561M parameters
    assert need["total"] == pytest.approx(1.1 * (need["shards"] + need["checkpoints"] + need["pre-seeded files"]))


def test_probe_verdicts():
    assert "4 visible" in probe_verdict(f"visible=all\nnvidia-smi=yes\n{NVIDIA_SMI_4}\n", 0, "", 4)
    with pytest.raises(PreflightError, match="needs 8 GPUs but the container sees 4"):
        probe_verdict(f"visible=all\nnvidia-smi=yes\n{NVIDIA_SMI_4}\n", 0, "", 8)
    with pytest.raises(PreflightError, match="nvidia-smi fails inside the container"):
        probe_verdict("visible=0\nnvidia-smi=yes\nNVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9, "", 1)
    with pytest.raises(PreflightError, match="no NVIDIA runtime") as no_driver:
        probe_verdict("", None, 'could not select device driver "" with capabilities: [[gpu]]', 1)
    assert "nvidia-ctk runtime configure" in str(no_driver.value)
    with pytest.raises(PreflightError, match="do not exist on this machine"):
        probe_verdict("", None, "nvidia-container-cli: device error: 7: unknown device", 8)
    with pytest.raises(PreflightError, match="did not reach the container"):
        probe_verdict("visible=\nnvidia-smi=no\n", 0, "", 1)
    assert "no nvidia-smi" in probe_verdict("visible=0\nnvidia-smi=no\n", 0, "", 1)


def test_states_from_exit_codes():
    assert state_from_exit(0) == State.SUCCEEDED and state_from_exit(3) == State.SUCCEEDED  # 3: evals failed
    assert state_from_exit(4) == State.FAILED and state_from_exit(130) == State.CANCELLED
    assert State.CANCELLED.is_terminal() and not State.RUNNING.is_terminal()
