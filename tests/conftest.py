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
