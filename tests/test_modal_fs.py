"""`modal://VOLUME/path` storage against an in-memory stand-in of the Modal Volume API.

The stand-in (`FakeVolume`) keeps files in a dict and has the real SDK's method signatures, checked with
`inspect.signature` against the installed `modal` so it cannot drift; nothing here reaches Modal's network. On top
of the filesystem, the laptop-side commands (`runner sync`, `runner ls`) and the node agent's storage layer run
against a volume exactly as against S3.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.errors import StorageError
from runner.modal_fs import ModalVolumeFileSystem
from runner.storage import open_storage, split_url

modal = pytest.importorskip("modal")


class NotFoundError(Exception):
    """Named like modal.exception.NotFoundError, which the SDK raises for a missing directory listing."""


class FakeVolume:
    """An in-memory Modal Volume: {path: (bytes, mtime)}; only the methods the filesystem and backend use."""

    volumes: dict[str, "FakeVolume"] = {}

    def __init__(self, name: str):
        self.name, self.files, self.commits = name, {}, 0

    @classmethod
    def from_name(cls, name: str, *, environment_name=None, create_if_missing: bool = False, version=None, create_options=None, client=None):
        if name not in cls.volumes:
            if not create_if_missing:
                raise NotFoundError(f"Volume '{name}' not found")
            cls.volumes[name] = cls(name)
        return cls.volumes[name]

    def listdir(self, path: str, *, recursive: bool = False):
        from modal.types import FileEntry, FileEntryType

        base = path.strip("/")
        if base in self.files:
            data, mtime = self.files[base]
            return [FileEntry(path=base, type=FileEntryType.FILE, mtime=mtime, size=len(data))]
        prefix = base + "/" if base else ""
        under = [p for p in self.files if p.startswith(prefix)]
        if base and not under:
            raise NotFoundError(f"No such file or directory: {path}")
        out: dict[str, FileEntry] = {}
        for p in under:
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest) + (1 if recursive else 0)):  # the directories on the way
                name = prefix + "/".join(rest[:depth])
                out.setdefault(name, FileEntry(path=name, type=FileEntryType.DIRECTORY, mtime=0, size=0))
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                data, mtime = self.files[p]
                out[p] = FileEntry(path=p, type=FileEntryType.FILE, mtime=mtime, size=len(data))
        return [out[k] for k in sorted(out)]

    def iterdir(self, path: str, *, recursive: bool = True):
        yield from self.listdir(path, recursive=recursive)

    def read_file(self, path: str):
        yield self._get(path)

    def read_file_into_fileobj(self, path: str, fileobj, progress_cb=None) -> int:
        data = self._get(path)
        fileobj.write(data)
        return len(data)

    def _get(self, path: str) -> bytes:
        if path.strip("/") not in self.files:
            raise FileNotFoundError(f"No such file: {path}")
        return self.files[path.strip("/")][0]

    @contextmanager
    def batch_upload(self, force: bool = False):
        batch = _FakeBatch(self, force)
        yield batch
        for path, data in batch.pending.items():  # all files land at the end of the block, as on Modal
            self.files[path] = (data, int(time.time() * 1000) + len(self.files))

    def remove_file(self, path: str, recursive: bool = False) -> None:
        key = path.strip("/")
        inside = [p for p in self.files if p.startswith(key + "/")]
        if key in self.files:
            del self.files[key]
        elif inside and recursive:
            for p in inside:
                del self.files[p]
        else:
            raise FileNotFoundError(path)

    def commit(self):
        self.commits += 1

    def reload(self):
        pass


class _FakeBatch:
    def __init__(self, volume: FakeVolume, force: bool):
        self.volume, self.force, self.pending = volume, force, {}

    def put_file(self, local_file, remote_path, mode: int | None = None):
        key = str(remote_path).strip("/")
        if key in self.volume.files and not self.force:
            raise FileExistsError(key)
        if isinstance(local_file, (str, Path)):
            data = Path(local_file).read_bytes()
        else:
            data = local_file.read()
        self.pending[key] = data


@pytest.fixture
def volumes(monkeypatch):
    """The stand-in behind modal.Volume.from_name, a token in the environment, and one empty volume `vol`."""
    FakeVolume.volumes = {"vol": FakeVolume("vol")}
    monkeypatch.setattr(modal.Volume, "from_name", FakeVolume.from_name)
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    return FakeVolume.volumes


@pytest.mark.parametrize("method", ["listdir", "iterdir", "read_file", "read_file_into_fileobj", "batch_upload", "remove_file", "commit", "reload"])
def test_stand_in_has_the_real_volume_signatures(method):
    real = inspect.signature(getattr(modal.Volume, method))
    fake = inspect.signature(getattr(FakeVolume, method))
    assert list(fake.parameters) == list(real.parameters), (method, fake, real)
    assert [p.kind for p in fake.parameters.values()] == [p.kind for p in real.parameters.values()]


def test_stand_in_from_name_and_put_file_match_the_sdk():
    real = inspect.signature(modal.Volume.from_name).parameters
    fake = inspect.signature(FakeVolume.from_name).parameters
    assert list(fake) == list(real) and all(fake[k].kind == real[k].kind for k in real)
    from modal.volume import VolumeUploadContextManager

    assert list(inspect.signature(_FakeBatch.put_file).parameters) == list(inspect.signature(VolumeUploadContextManager.put_file).parameters)
    from modal.types import FileEntry

    assert set(FileEntry.__dataclass_fields__) == {"path", "type", "mtime", "size"}


def test_write_list_read_remove(volumes):
    fs = ModalVolumeFileSystem()
    fs.pipe_file("modal://vol/run/a.txt", b"hello")
    with fs.open("vol/run/sub/b.bin", "wb") as f:
        f.write(b"x" * 1000)
    assert fs.cat_file("modal://vol/run/a.txt") == b"hello"
    assert sorted(fs.ls("vol/run", detail=False)) == ["vol/run/a.txt", "vol/run/sub"]
    info = fs.info("vol/run/sub/b.bin")
    assert info["size"] == 1000 and info["type"] == "file" and info["mtime"]
    assert fs.info("vol/run/sub")["type"] == "directory" and fs.isdir("vol/run") and fs.exists("vol/run/a.txt")
    assert fs.find("vol/run") == ["vol/run/a.txt", "vol/run/sub/b.bin"] and fs.find("vol/run/a.txt") == ["vol/run/a.txt"]
    assert fs.find("vol/nothing") == [] and not fs.exists("vol/run/missing")
    with pytest.raises(FileNotFoundError):
        fs.info("vol/nothing/here")
    with fs.open("vol/run/sub/b.bin", "rb") as f:
        assert f.read() == b"x" * 1000
    fs.rm("vol/run/sub", recursive=True)
    assert fs.find("vol/run") == ["vol/run/a.txt"]
    fs.rm_file("vol/run/a.txt")
    assert volumes["vol"].files == {}
    with pytest.raises(ValueError, match="whole volume"):
        fs.rm("vol", recursive=True)


def test_a_failed_write_uploads_nothing_and_rewrites_replace(volumes):
    fs = ModalVolumeFileSystem()
    with pytest.raises(RuntimeError):
        with fs.open("vol/x", "wb") as f:
            f.write(b"half")
            raise RuntimeError("writer died")
    assert not fs.exists("vol/x")
    fs.pipe_file("vol/x", b"one")
    before = fs.info("vol/x")["mtime"]
    fs.pipe_file("vol/x", b"two")  # force=True: a rewrite replaces, it does not raise FileExistsError
    assert fs.cat_file("vol/x") == b"two" and fs.info("vol/x")["mtime"] != before


def test_put_and_get_files(volumes, tmp_path):
    fs = ModalVolumeFileSystem()
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"w" * 5000)
    fs.put_file(str(src), "vol/ckpt/model.pt")
    fs.get_file("vol/ckpt/model.pt", str(tmp_path / "back.pt"))
    assert (tmp_path / "back.pt").read_bytes() == b"w" * 5000


def test_storage_urls_and_errors(volumes, monkeypatch):
    assert split_url("modal://vol/runs/x/") == ("modal", "vol/runs/x")
    with pytest.raises(StorageError, match="does not name a Modal Volume"):
        split_url("modal://bad name/x")
    storage = open_storage("modal://vol/prefix")  # the probe: list, write, read back, delete
    storage.write_text("_runner/runs/r/status.json", "{}")
    assert storage.find("_runner") == {"runs/r/status.json": (2, storage.find("_runner")["runs/r/status.json"][1])}
    assert not storage.is_local and storage.read_text("_runner/runs/r/status.json") == "{}"
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.setattr("modal.config.config.get", lambda key, *a, **k: None)
    with pytest.raises(StorageError, match="No Modal token") as raised:
        open_storage("modal://vol/prefix")
    assert "modal token new" in str(raised.value)


def test_missing_sdk_is_a_fix_not_a_traceback(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modal", None)  # `import modal` now raises ImportError
    monkeypatch.setitem(sys.modules, "modal.config", None)
    with pytest.raises(StorageError, match="Modal SDK is not installed") as raised:
        open_storage("modal://vol/prefix")
    assert "pip install" in str(raised.value)


def test_sync_and_ls_work_on_a_volume(volumes, tmp_path):
    """The laptop-side commands on a volume: a run's storage synced from a folder to a volume and back, and listed."""
    from runner.cli import main
    from runner.plan import build_plan
    from runner.status import StatusFile

    src = tmp_path / "src"
    folder = open_storage(str(src))
    plan = build_plan("seed", "smoke", run_id="r1")
    folder.write_text("_runner/runs/r1/plan.json", plan.to_json())
    StatusFile(folder, plan, "r1", log=lambda m: None).set(state="succeeded")
    folder.write_bytes("base_data/shard_00000.parquet", b"p" * 3000)
    runner = CliRunner()
    up = runner.invoke(main, ["sync", str(src), "modal://vol/nanochat"])
    assert up.exit_code == 0, up.output
    assert "copied 3 file(s)" in up.output
    again = runner.invoke(main, ["sync", str(src), "modal://vol/nanochat"])
    assert "copied 0 file(s)" in again.output and "3 identical" in again.output, again.output
    listed = runner.invoke(main, ["ls", "modal://vol/nanochat"])
    assert listed.exit_code == 0 and "r1" in listed.output and "succeeded" in listed.output, listed.output
    back = runner.invoke(main, ["sync", "modal://vol/nanochat", str(tmp_path / "back")])
    assert back.exit_code == 0, back.output
    assert (tmp_path / "back/base_data/shard_00000.parquet").read_bytes() == b"p" * 3000
    assert volumes["vol"].files["nanochat/base_data/shard_00000.parquet"][0] == b"p" * 3000


def test_modal_urls_work_in_any_fsspec_user_through_the_entry_point(volumes, tmp_path):
    """The `fsspec.specs` entry point: a fresh Python that never imports runner.storage knows modal://, and
    pyarrow reads a table from a Volume through fsspec."""
    import subprocess
    import sys

    import fsspec
    import pyarrow.csv

    code = "import fsspec, sys; cls = fsspec.get_filesystem_class('modal'); print(cls.__module__, cls.__name__, 'runner.storage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["runner.modal_fs", "ModalVolumeFileSystem", "False"], out.stderr
    with fsspec.open("modal://vol/tables/t.csv", "wb") as f:
        f.write(b"a,b\n1,2\n3,4\n")
    with fsspec.open("modal://vol/tables/t.csv", "rb") as f:
        table = pyarrow.csv.read_csv(f)
    assert table.column("b").to_pylist() == [2, 4]
