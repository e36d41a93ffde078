"""The deployable Modal app (backends/modal_app.py) with the real SDK, offline: its functions and their options as
the SDK sees them, loaded as Modal's CLI loads it, from other Pythons and without this package; a stage with a
stand-in `runner` (attempt-aware argv, commits, segments); the driver simulated over a whole segmented run."""

from __future__ import annotations

import inspect
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backends import modal_plan, modal_request

modal = pytest.importorskip("modal")
REPO = Path(__file__).resolve().parents[1]
OTHER_PYTHONS = Path(os.environ.get("RUNNER_MODAL_TEST_PYTHONS", Path.home() / ".cache/nanochat-runner-test"))
MAKE_PYTHONS = ("uv venv --python /root/.pyenv/versions/3.X.Y/bin/python ~/.cache/nanochat-runner-test/modal-py3.X && "
                "uv pip install --python ~/.cache/nanochat-runner-test/modal-py3.X/bin/python modal==1.6.4")


@pytest.fixture(scope="module")
def app_module():
    return modal_request.load_app_module({"RUNNER_MODAL_APP": "nanochat-runner-test"})


def _impl(fn):
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(fn)


def test_functions_and_their_options_as_the_sdk_sees_them(app_module):
    m = app_module
    info = {name: getattr(m, name).info() for name in ("prep", "gpu_phase", "report", "driver")}
    assert info["gpu_phase"].gpus == [("H100!", 8)] and all(not info[n].gpus for n in ("prep", "report", "driver"))
    # Sized for 8 ranks (Modal's default is 0.125 cores and 128 MiB), the same numbers the laptop uses per GPU count.
    assert {"cpu": info["gpu_phase"].cpu, "memory": info["gpu_phase"].memory_mib} == modal_plan.gpu_resources(8) == m.GPU_RESOURCES_8
    assert (info["prep"].cpu, info["prep"].memory_mib) == (m.PREP_RESOURCES["cpu"], m.PREP_RESOURCES["memory"]) and m.PREP_RESOURCES == modal_plan.PREP_RESOURCES
    assert info["report"].cpu <= 2 and m.REPORT_RESOURCES == modal_plan.REPORT_RESOURCES  # the report books no GPU
    assert info["gpu_phase"].ephemeral_disk_mib == info["prep"].ephemeral_disk_mib == modal_plan.DISK_MIB
    for name in ("prep", "gpu_phase", "report"):  # a stuck container start fails in minutes, not after the whole timeout
        assert info[name].startup_timeout <= 30 * 60 < info[name].timeout == m.DAY_SEC
    assert info["driver"].nonpreemptible and info["driver"].max_retries is None and info["driver"].startup_timeout <= 600
    assert m.SEGMENT_GRACE_SEC == modal_plan.SEGMENT_GRACE_SEC and m.PYTHON == modal_request.PYTHON


def test_nothing_is_pickled_the_containers_import_one_file(app_module):
    for name in ("prep", "gpu_phase", "report", "driver"):
        source = _impl(getattr(app_module, name))._source_info
        assert not source.is_serialized() and source.module_name == "modal_app"
        assert list(source.get_entrypoint_mount()) == ["modal_app"]  # that file alone, not this package


def test_per_call_options_round_trip_through_with_options(app_module):
    """What the driver hands `with_options` for a stage, built with the real SDK, reads back as set."""
    run = {"run_id": "r", "env": {"HF_TOKEN": "x"}, "secrets": ["wandb"], "volumes": {"/vol/v": "v"}, "environment": "dev", "budget": 3}
    stage = {"options": {"gpu": "H100!:2", "cpu": 10.0, "memory": 40960, "timeout": 7200}}
    params = set(inspect.signature(modal.Function.with_options).parameters) - {"self"}
    options = app_module.Driver(run, {}, None, None).options(stage, 3)
    assert set(options) <= params
    variant = _impl(app_module.gpu_phase.with_options(**options))._options
    assert variant.timeout_secs == 7200 and variant.retry_policy.retries == 3 and variant.retry_policy.initial_delay_ms == 0
    assert (variant.resources.gpu_config.gpu_type, variant.resources.gpu_config.count) == ("H100!", 2)
    assert variant.resources.milli_cpu == 10000 and variant.resources.memory_mb == 40960
    assert [p for p, _ in variant.validated_volumes] == ["/vol/v"] and len(variant.secrets) == 2


def _run_python(python: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([python, "-I", "-c", code, str(REPO / "backends" / "modal_app.py")], capture_output=True, text=True, env=env, timeout=300)


RESOLVE = """
import importlib.util, sys, warnings
spec = importlib.util.spec_from_file_location("modal_app", sys.argv[1]); m = importlib.util.module_from_spec(spec)
sys.modules["modal_app"] = m; spec.loader.exec_module(m)
assert not any(n == "runner" or n.startswith(("runner.", "backends")) for n in sys.modules), "imports this package"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    print(sys.version_info[:2], sorted(m.app.registered_functions), m.gpu_phase.info().gpus)
"""


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.13"])  # 3.11: the image's Python (add_python)
def test_the_app_resolves_from_other_laptop_pythons_with_modal_alone(version):
    """From a Python that has only `modal` (no nanochat-runner): the module imports, the app and its functions are
    defined. Nothing is pickled, so the laptop's version need not match the image's 3.11."""
    python = OTHER_PYTHONS / f"modal-py{version}" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no Python {version} with modal at {python}; make it with: {MAKE_PYTHONS}")
    out = _run_python(str(python), RESOLVE)
    assert out.returncode == 0, out.stderr
    assert f"({version.replace('.', ', ')})" in out.stdout and "['driver', 'gpu_phase', 'gpu_phase_x2', 'gpu_phase_x4', 'prep', 'report']" in out.stdout
    assert "[('H100!', 8)]" in out.stdout


# -- a stage with a stand-in `runner` ---------------------------------------------------------------------------


@pytest.fixture
def fake_runner(tmp_path, monkeypatch):
    """`runner` that records its argv and plan, then trains until SIGTERM (exit 130) or exits with $EXIT."""
    fake = tmp_path / "bin/runner"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$ARGS_FILE"\necho "$RUNNER_PLAN_JSON" > "$ARGS_FILE.plan"\n'
                    'if [ -n "$EXIT" ]; then exit "$EXIT"; fi\ntrap \'exit 130\' TERM\nwhile true; do sleep 0.05; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ARGS_FILE", str(tmp_path / "args"))
    return tmp_path / "args"


class Vol:
    """Stands in for modal.Volume in a container: commit() as the SDK has it."""

    def __init__(self, fail: bool = False):
        self.commits, self.fail = 0, fail

    def commit(self):
        if self.fail:
            raise RuntimeError("commit refused")
        self.commits += 1


class Attempts(dict):
    """Stands in for the modal.Dict of attempts: get() and put() as the SDK has them."""

    def get(self, key, default=None):
        return super().get(key, default)

    def put(self, key, value, *, skip_if_exists=False):
        self[key] = value
        return True


def test_stand_ins_keep_the_sdk_signatures():
    for fake, real in ((Vol.commit, modal.Volume.commit), (Attempts.get, modal.Dict.get), (Attempts.put, modal.Dict.put)):
        assert list(inspect.signature(fake).parameters) == list(inspect.signature(real).parameters)


JOB = {"stage": "base", "argv": ["node", "run", "--storage", "/vol/v/x", "--run-id", "r1", "--from", "base"],
       "continuing_argv": ["node", "run", "--storage", "/vol/v/x", "--run-id", "r1"], "plan_json": '{"p": 1}', "volume": "v"}


def test_a_segment_ends_committed_and_its_retry_resumes(app_module, fake_runner):
    attempts, vol = Attempts(), Vol()
    job = {**JOB, "segment_s": 0.5, "commit_every_s": 0.1}
    with pytest.raises(app_module.SegmentEnded):  # raised on purpose: Modal retries the call at once
        app_module.run_stage(job, call_id="fc-1", attempts=attempts, volume_factory=lambda name: vol)
    assert vol.commits >= 2 and fake_runner.read_text().splitlines()[-1].endswith("--from base")
    assert Path(f"{fake_runner}.plan").read_text().strip() == '{"p": 1}'
    with pytest.raises(app_module.SegmentEnded):  # the retry of the same call: --from must not restart training
        app_module.run_stage(job, call_id="fc-1", attempts=attempts, volume_factory=lambda name: vol)
    assert fake_runner.read_text().splitlines()[-1] == "node run --storage /vol/v/x --run-id r1" and attempts == {"fc-1": 2}


def test_a_node_failure_is_returned_not_retried_and_a_failed_commit_raises(app_module, fake_runner, monkeypatch):
    monkeypatch.setattr(app_module, "COMMIT_PAUSE_SEC", 0.01)
    monkeypatch.setenv("EXIT", "1")
    vol = Vol()
    result = app_module.run_stage({**JOB, "segment_s": 0}, call_id="fc-2", attempts=Attempts(), volume_factory=lambda name: vol)
    assert result == {"stage": "base", "exit_code": 1, "attempt": 0} and vol.commits == 1
    monkeypatch.setenv("EXIT", "0")
    with pytest.raises(app_module.VolumeCommitFailed):  # the next stage must not mount a Volume without it
        app_module.run_stage({**JOB, "segment_s": 0}, call_id="fc-3", attempts=Attempts(), volume_factory=lambda name: Vol(fail=True))
    monkeypatch.setenv("PATH", "/nonexistent")
    missing = app_module.run_stage({**JOB, "segment_s": 0, "volume": None}, call_id="fc-4", attempts=Attempts())
    assert missing["exit_code"] == app_module.EXIT_NOT_STARTED and "runner" in missing["error"]


def test_a_saved_request_is_what_the_sdk_accepts(app_module, tmp_path, monkeypatch):
    """`--save-request` → JSON → (`modal run --detach ... --request`) → every stage's options through the real
    `with_options` of the function it names, and its argv lists intact."""
    import json

    from backends.base import RunSpec
    from backends.modal_backend import ModalBackend
    from runner.plan import build_plan

    monkeypatch.setenv("HF_TOKEN", "secret-hf-value")
    backend = ModalBackend()
    backend.configure(secrets=("wandb",), save_request=str(tmp_path / "run.json"))
    backend.prepare(RunSpec(plan=build_plan("seed", "d32", gpus=1, run_id="r1"), storage="modal://vol/runs", only_phase="base"))
    run = json.loads((tmp_path / "run.json").read_text())
    assert "secret-hf-value" not in json.dumps(run) and run["env_names"] == ["HF_TOKEN"]
    driver = app_module.Driver({**run, "env": {"HF_TOKEN": "secret-hf-value"}}, {}, None, None)
    for stage in run["stages"]:
        options = _impl(getattr(app_module, stage["function"]).with_options(**driver.options(stage, 2)))._options
        assert options.timeout_secs == stage["options"]["timeout"] and options.retry_policy.retries == 2
        assert stage["job"]["argv"][:2] == ["node", "run"] and stage["job"]["argv"][-2:] == ["--only", "base"]
    assert [s["name"] for s in run["stages"]] == ["base"] and run["stages"][0]["job"]["segment_s"] > 0


def test_modal_cli_deploys_and_runs_the_file_by_hand():
    """`modal deploy backends/modal_app.py` finds the app as Modal's CLI imports it, and `modal run --detach
    backends/modal_app.py --request FILE` has its entrypoint (its --help needs no network)."""
    python = OTHER_PYTHONS / "modal-py3.13" / "bin" / "python"
    python = str(python) if python.exists() else sys.executable
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from modal.cli.import_refs import import_app_from_ref, parse_import_ref\n"
            "app = import_app_from_ref(parse_import_ref(sys.argv[1]), base_cmd='modal deploy')\n"
            "print(app.name, sorted(app.registered_functions), list(app.registered_entrypoints))")
    out = _run_python(python, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[1].strip() == "['driver', 'gpu_phase', 'gpu_phase_x2', 'gpu_phase_x4', 'prep', 'report'] ['main']"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    helped = subprocess.run([python, "-m", "modal", "run", str(REPO / "backends" / "modal_app.py"), "--help"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=REPO.parent)
    assert helped.returncode == 0 and "--request" in helped.stdout, helped.stderr


# -- several nodes: the GPU stages on a Modal cluster -------------------------------------------------------------


def test_clustered_gpu_stages_are_the_gpu_stage_on_n_containers(app_module):
    single = app_module.gpu_phase.info()
    for size in app_module.CLUSTER_SIZES:
        info = getattr(app_module, f"gpu_phase_x{size}").info()
        assert info.cluster_info.size == size and single.cluster_info is None
        assert (info.gpus, info.cpu, info.memory_mib, info.ephemeral_disk_mib) == (single.gpus, single.cpu, single.memory_mib, single.ephemeral_disk_mib)
        assert not _impl(getattr(app_module, f"gpu_phase_x{size}"))._source_info.is_serialized()
    assert app_module.CLUSTER_SIZES == modal_plan.CLUSTER_SIZES


def test_each_container_of_a_cluster_gets_its_place_and_only_rank_0_counts_attempts(app_module, fake_runner, monkeypatch):
    from modal._cluster import ClusterContext  # the SDK's own type of get_cluster_info()

    monkeypatch.setenv("EXIT", "0")
    job = {**JOB, "volume": None, "segment_s": 0}
    attempts = Attempts()
    for rank in (1, 0):
        info = ClusterContext(rank=rank, cluster_id="cl-7", container_ips=["fd00::1", "fd00::2"], container_ipv4_ips=["10.1.0.1", "10.1.0.2"], fabric_ids=[])
        result = app_module.run_cluster_stage(job, info, "fc-9", attempts=attempts)
        assert result["exit_code"] == 0 and result["stage"] == f"base node {rank}"
        assert fake_runner.read_text().splitlines()[-1].endswith(f"--from base --nnodes 2 --node-rank {rank} --master 10.1.0.1:29500 --launch-id cl-7")
    assert attempts == {"fc-9": 1}  # the follower's start did not count as an attempt of the call


def test_a_two_node_run_on_modal_uses_the_clustered_stage_and_s3(app_module, tmp_path):
    import json

    from backends.base import BackendError, RunSpec
    from backends.modal_backend import ModalBackend
    from runner.plan import build_plan

    backend = ModalBackend()
    backend.configure(save_request=str(tmp_path / "run.json"))
    backend.prepare(RunSpec(plan=build_plan("seed", "d20", gpus=8, nodes=2, run_id="r2"), storage="s3://bucket/runs"))
    run = json.loads((tmp_path / "run.json").read_text())
    functions = {s["name"]: s["function"] for s in run["stages"]}
    assert functions["prep"] == "prep" and functions["base"] == functions["sft"] == "gpu_phase_x2" and functions["report"] == "report"
    nodes = {s["name"]: json.loads(s["job"]["plan_json"])["nodes"] for s in run["stages"]}
    assert nodes["base"] == 2 and nodes["prep"] == nodes["report"] == 1  # a CPU stage is one agent
    driver = app_module.Driver({**run, "env": {}}, {}, None, None)
    for stage in run["stages"]:  # every stage's options through the real with_options of its function
        _impl(getattr(app_module, stage["function"]).with_options(**driver.options(stage, 2)))
    with pytest.raises(BackendError, match="need S3 storage"):
        ModalBackend().prepare(RunSpec(plan=build_plan("seed", "d20", gpus=8, nodes=2, run_id="r3"), storage="modal://vol/runs"))
    with pytest.raises(BackendError, match="clusters of 8 nodes are not deployed"):
        ModalBackend().prepare(RunSpec(plan=build_plan("seed", "d20", gpus=8, nodes=8, run_id="r4"), storage="s3://bucket/runs"))
