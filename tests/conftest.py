"""Shared pytest fixtures. The S3 server logic lives in tests/infra/seaweedfs.py; this file only wires it up."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # `tests.infra` must import under plain `pytest` too, not only `python -m pytest`
    sys.path.insert(0, str(_REPO_ROOT))

from tests.infra import seaweedfs  # noqa: E402


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test S3 server. ``url`` is ``s3://<name>/run``."""

    name: str
    url: str
    endpoint_url: str
    storage_options: dict[str, Any] = field(repr=False)
    env: dict[str, str] = field(repr=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the S3 server get the `s3` marker, so `-m "not s3"` leaves them out.
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweedfs.SeaweedFS]:
    """A SeaweedFS S3 server for the whole session (127.0.0.1, keys testkey/testsecret), stopped by PID at the end."""
    if seaweedfs.find_weed() is None:
        pytest.fail(seaweedfs.MISSING_WEED_HINT, pytrace=False)
    server = seaweedfs.SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: seaweedfs.SeaweedFS) -> Iterator[S3Bucket]:
    """A new, uniquely named bucket; its objects and the bucket are deleted afterwards."""
    client = s3_server.boto3_client()
    name = seaweedfs.unique_bucket_name()
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(
            name=name,
            url=f"s3://{name}/run",
            endpoint_url=s3_server.endpoint_url,
            storage_options=s3_server.storage_options(),
            env=s3_server.env(),
        )
    finally:
        seaweedfs.delete_bucket(client, name, timeout=60)


@pytest.fixture
def s3_env(s3_server: seaweedfs.SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point AWS_* variables in os.environ at the test server for this test; returns them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def stopped_s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` where nothing listens (connections are refused) for the test's duration."""
    with seaweedfs.unused_endpoint() as url:
        yield url


# -- Docker: a real engine, the runner image built offline (tests/infra/docker_engine.py, tests/infra/image.py) ----

import time  # noqa: E402

from tests.infra import docker_engine as _docker_engine  # noqa: E402
from tests.infra import image as _image  # noqa: E402


def _start_engine(tmp_path_factory: pytest.TempPathFactory, **options: Any) -> Iterator[_docker_engine.DockerEngine]:
    if _docker_engine.find_dockerd() is None:
        pytest.fail(_docker_engine.MISSING_DOCKERD_HINT, pytrace=False)
    engine = _docker_engine.DockerEngine(**options).start()
    try:
        yield engine
    finally:
        engine.stop()
        engine.remove()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_docker_engine.DockerEngine]:
    """dockerd with the stand-in NVIDIA hook (GPU requests become NVIDIA_VISIBLE_DEVICES), stopped by PID at the end."""
    yield from _start_engine(tmp_path_factory, nvidia_hook=True, bridge=True)


@pytest.fixture(scope="session")
def docker_engine_without_gpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_docker_engine.DockerEngine]:
    """A second dockerd with no NVIDIA hook anywhere on its PATH, as on a box without the container toolkit."""
    yield from _start_engine(tmp_path_factory, nvidia_hook=False, bridge=False)


@pytest.fixture(scope="session")
def image_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(build context, build args) of the offline test build: the repository's image files, the double, wheels."""
    from tests.harness import COMMITS

    context = tmp_path_factory.mktemp("image") / "context"
    return context, _image.make_context(context, COMMITS["seed"])


@pytest.fixture(scope="session")
def runner_image(docker_engine: _docker_engine.DockerEngine, image_context: tuple[Path, dict[str, str]]) -> str:
    """The real Dockerfile built offline on the engine (Debian base, the nanochat double, a wheelhouse); its tag."""
    from backends.local_image import build

    client = docker_engine.client(timeout=900)
    _image.import_base(client)
    context, build_args = image_context
    started = time.monotonic()
    lines: list[str] = []
    try:
        build(client, _image.TEST_IMAGE, context, build_args, lines.append)
    except Exception:
        print("\n".join(lines[-60:]))
        raise
    _image.TIMINGS["image build (offline, legacy builder)"] = time.monotonic() - started
    client.close()
    return _image.TEST_IMAGE


@pytest.fixture(scope="session")
def image_flags_dir(docker_engine: _docker_engine.DockerEngine, runner_image: str) -> str:
    """Where the image's runner keeps the flag tables, which the nanochat double reads (NANOCHAT_DOUBLE_FLAGS_DIR)."""
    client = docker_engine.client()
    code = "import pathlib, runner; print(pathlib.Path(runner.__file__).parent / 'recipes')"
    out = client.containers.run(runner_image, ["-c", code], entrypoint=["/opt/runner/bin/python"], remove=True, network_mode="none")
    client.close()
    return out.decode().strip()


@pytest.fixture
def docker_env(docker_engine: _docker_engine.DockerEngine, tmp_path: Path) -> dict[str, str]:
    """os.environ for a `runner`/`docker` subprocess aimed at the test engine; compose comes from the test extra."""
    import os

    config = tmp_path / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    compose = Path(_image.compose_binary())
    (config / "cli-plugins" / "docker-compose").symlink_to(compose)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANDB_", "RUNNER_", "NANOCHAT_DOUBLE"))}
    env.update(docker_engine.env())
    env["DOCKER_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(_REPO_ROOT)
    return env


@pytest.fixture
def no_leftover_containers(docker_engine: _docker_engine.DockerEngine) -> Iterator[None]:
    """Fails the test if it leaves any container behind on the engine (and removes them)."""
    yield
    client = docker_engine.client()
    left = client.containers.list(all=True)
    for container in left:
        container.remove(force=True)
    client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _image.TIMINGS:
        terminalreporter.write_sep("-", "docker timings")
        for what, seconds in _image.TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


# -- SSH: a real sshd on 127.0.0.1 with a key-authorized test user and stand-in GPUs (tests/infra/sshd.py) ---------

from tests.infra import sshd as _sshd  # noqa: E402


@pytest.fixture(scope="session")
def ssh_host() -> Iterator[_sshd.SSHHost]:
    """sshd on a free port of 127.0.0.1 for the test user (8 stand-in H100s), stopped by PID at the end."""
    if _sshd.find_sshd() is None:
        pytest.fail(_sshd.MISSING_SSHD_HINT, pytrace=False)
    host = _sshd.SSHHost().start()
    try:
        yield host
    finally:
        host.stop()
        host.remove()


@pytest.fixture(scope="session")
def ssh_install_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(nanochat source, wheelhouse) that bare mode uploads: the double (with its flag tables beside it, where it
    looks for them, and a requirements.txt: it has no uv.lock) and the image tests' offline wheelhouse."""
    import shutil

    from tests.harness import DOUBLE

    src = tmp_path_factory.mktemp("ssh-install") / "nanochat-double"
    shutil.copytree(DOUBLE, src, ignore=shutil.ignore_patterns("__pycache__", "report.md"))
    shutil.copytree(_REPO_ROOT / "runner" / "recipes", src / "runner" / "recipes")
    (src / "requirements.txt").write_text("pyarrow\n")
    return src, _image.wheelhouse()


# -- Slurm: a real two-node cluster on 127.0.0.1 (munged, slurmctld, slurmd n1 and n2; tests/infra/slurm.py) ----------

from tests.infra import slurm as _slurm  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_slurm.SlurmCluster]:
    """Slurm with nodes n1, n2 (partition debug) on 127.0.0.1; every job cancelled and every daemon stopped by PID."""
    if _slurm.find_slurm() is None:  # tests/run.sh installs it wherever apt and root are at hand
        pytest.skip(_slurm.MISSING_SLURM_HINT)
    cluster = _slurm.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
