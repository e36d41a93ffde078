"""The test S3 server itself (tests/infra/seaweedfs.py): real keys work, wrong keys fail, stop leaves nothing."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import pytest

from tests.infra import seaweedfs


def _refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_right_keys_put_and_get(s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_bucket.storage_options)
    path = f"{s3_bucket.url}/hello.txt"
    with fs.open(path, "wb") as f:
        f.write(b"hello seaweed")
    with fsspec.open(path, "rb", **s3_bucket.storage_options) as f:
        assert f.read() == b"hello seaweed"
    assert fs.ls(s3_bucket.url, detail=False) == [f"{s3_bucket.name}/run/hello.txt"]


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [("wrongkey", seaweedfs.SECRET_KEY, "InvalidAccessKeyId"), (seaweedfs.ACCESS_KEY, "wrongsecret", None)],
)
def test_wrong_keys_rejected(s3_bucket, key, secret, code):
    options = {**s3_bucket.storage_options, "key": key, "secret": secret}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    with pytest.raises(PermissionError) as excinfo:
        fs.pipe_file(f"{s3_bucket.url}/nope.txt", b"x")
    if code:
        assert excinfo.value.__cause__.response["Error"]["Code"] == code


def test_s3_env_configures_boto3(s3_env, s3_bucket):
    import boto3

    assert os.environ["AWS_ENDPOINT_URL"] == s3_bucket.endpoint_url
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert s3_bucket.name in names


def test_stop_leaves_no_process_and_no_listener(tmp_path, s3_server):
    server = seaweedfs.SeaweedFS(tmp_path / "second", s3_port=0)
    with server:
        pid = server.pid
        assert server.endpoint_url != s3_server.endpoint_url
        client = server.boto3_client()
        client.create_bucket(Bucket="stop-test")
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["stop-test"]
        ports = [p + offset for p in server.ports.values() for offset in (0, seaweedfs.GRPC_OFFSET)]
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not Path(f"/proc/{pid}").exists()
    assert all(_refuses("127.0.0.1", port) for port in ports), ports
    # the session server is untouched
    assert "stop-test" not in [b["Name"] for b in s3_server.boto3_client().list_buckets()["Buckets"]]


def test_stopped_endpoint_refuses(stopped_s3_endpoint):
    url = urlsplit(stopped_s3_endpoint)
    assert url.scheme == "http" and url.hostname == "127.0.0.1"
    assert _refuses(url.hostname, url.port)


def test_missing_weed_points_to_run_sh(tmp_path, monkeypatch):
    monkeypatch.setenv("WEED_BIN", str(tmp_path / "no-such-weed"))
    with pytest.raises(seaweedfs.WeedNotFoundError, match="bash tests/run.sh"):
        seaweedfs.SeaweedFS(tmp_path).start()
