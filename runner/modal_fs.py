"""`modal://VOLUME/path`: an fsspec filesystem over the Modal Volume API, so storage can be a Modal Volume.

With it, everything that takes a storage URL (`runner sync`, `runner ls`, `status`, `report`, `chat`, and the
node agent itself) works on a Volume exactly as on S3: the first path component is the Volume's name, like an S3
bucket, and the rest is a path inside it. It uses only the Volume methods that are documented and stable:
`listdir`, `read_file_into_fileobj`, `batch_upload` (`put_file`), `remove_file`, and, in the container that has
the Volume mounted, `commit`/`reload` (done by the Modal backend, not here).

    fs = ModalVolumeFileSystem()                 # fsspec.filesystem("modal") once registered
    fs.put_file("model.pt", "my-volume/run/model.pt")
    fs.find("my-volume/run", detail=True)

Volumes have no directories of their own (a file's parents exist while it does), so `mkdir` is a no-op. Reads
and writes spool through a temporary file, never holding a multi-GB checkpoint in memory. `volume_factory` lets
the tests hand in a stand-in with the real API's signatures; by default it is `modal.Volume.from_name`.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import tempfile

from fsspec.spec import AbstractFileSystem

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,63}$")
SPOOL_BYTES = 16 * 1024 * 1024  # files above this spool to disk instead of memory
INSTALL_HINT = "pip install 'nanochat-runner[modal]' (or: pip install modal), then `modal token new`."
FILE, DIRECTORY = 1, 2  # modal.types.FileEntryType values


def sdk_problem() -> tuple[str, list[str]] | None:
    """(what is wrong, how to fix it) when the Modal SDK or credentials are missing on this machine, else None.

    Checked before anything talks to Modal, so that the first thing a user sees is the fix, not a stack trace or a
    minute of retries. Credentials are what the SDK itself accepts, from MODAL_* variables or the token file
    (~/.modal.toml, or MODAL_CONFIG_PATH; the profile MODAL_PROFILE): a token id and secret, or OAuth (refresh
    token, client id and secret). Inside a Modal container the task's own credentials are used.
    """
    try:
        from modal.config import config
    except ImportError:
        return "The Modal SDK is not installed.", [INSTALL_HINT.split(", then ")[0], "Then log in once: `modal token new`."]
    if os.environ.get("MODAL_TASK_ID"):
        return None
    if config.get("token_id") and config.get("token_secret"):
        return None
    if all(config.get(key) for key in ("oauth_refresh_token", "oauth_client_id", "oauth_client_secret")):
        return None
    return "No Modal token is configured on this machine.", [
        "Log in once: `modal token new` (it writes ~/.modal.toml), or",
        "export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (e.g. from a CI secret), or point MODAL_CONFIG_PATH at a token file.",
    ]


def _is_not_found(error: Exception) -> bool:
    # The SDK raises FileNotFoundError from reads and removals but modal.exception.NotFoundError from listings.
    return isinstance(error, FileNotFoundError) or type(error).__name__ == "NotFoundError"


class ModalVolumeFileSystem(AbstractFileSystem):
    """Files on Modal Volumes; paths are `VOLUME/path/inside`."""

    protocol = ("modal",)
    root_marker = ""
    cachable = False  # a fresh instance per open_storage: no stale Volume handles or listings across uses

    def __init__(self, environment_name: str | None = None, create_if_missing: bool = False, volume_factory=None, **kwargs):
        super().__init__(**kwargs)
        self.environment_name = environment_name
        self.create_if_missing = create_if_missing
        self._factory = volume_factory
        self._volumes: dict[str, object] = {}

    # -- paths and volumes -------------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("modal://"):
            path = path[len("modal://"):]
        return path.strip("/")

    def _split(self, path: str) -> tuple[str, str]:
        """("volume", "path/inside") from "modal://volume/path/inside"."""
        volume, _, inner = self._strip_protocol(path).partition("/")
        if not VOLUME_NAME_RE.match(volume):
            raise ValueError(f"{path!r} does not start with a Modal Volume name")
        return volume, inner.strip("/")

    def volume(self, name: str):
        if name not in self._volumes:
            factory = self._factory
            if factory is None:
                try:
                    import modal
                except ImportError:
                    raise ImportError(f"modal:// storage needs the Modal SDK: {INSTALL_HINT}") from None
                factory = modal.Volume.from_name
            self._volumes[name] = factory(name, environment_name=self.environment_name, create_if_missing=self.create_if_missing)
        return self._volumes[name]

    def _entry_info(self, volume: str, entry) -> dict:
        kind = "directory" if int(entry.type) == DIRECTORY else "file"
        return {"name": f"{volume}/{entry.path.strip('/')}", "size": int(entry.size or 0) if kind == "file" else 0,
                "type": kind, "mtime": entry.mtime}

    def _listdir(self, volume: str, inner: str, recursive: bool) -> list[dict]:
        try:
            entries = self.volume(volume).listdir(inner or "/", recursive=recursive)
        except Exception as e:  # noqa: BLE001 - not-found is translated, everything else is raised as is
            if _is_not_found(e):
                raise FileNotFoundError(f"modal://{volume}/{inner}") from None
            raise
        return [self._entry_info(volume, e) for e in entries]

    # -- listing -----------------------------------------------------------------------------------------------

    def ls(self, path, detail=True, **kwargs):
        volume, inner = self._split(path)
        found = self._listdir(volume, inner, recursive=False)
        return found if detail else [f["name"] for f in found]

    def info(self, path, **kwargs):
        volume, inner = self._split(path)
        if not inner:
            self._listdir(volume, "", recursive=False)  # raises FileNotFoundError for a missing volume
            return {"name": volume, "size": 0, "type": "directory"}
        parent = posixpath.dirname(inner)
        for entry in self._listdir(volume, parent, recursive=False):
            if entry["name"] == f"{volume}/{inner}":
                return entry
        raise FileNotFoundError(f"modal://{volume}/{inner}")

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """One recursive listing (a single API call per volume) instead of a walk, directory by directory."""
        if maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        volume, inner = self._split(path)
        try:
            entries = self._listdir(volume, inner, recursive=True)
        except FileNotFoundError:
            entries = []
        out = {e["name"]: e for e in entries if withdirs or e["type"] == "file"}
        if not out and inner:  # `path` may be a single file
            try:
                single = self.info(path)
                if single["type"] == "file":
                    out = {single["name"]: single}
            except FileNotFoundError:
                pass
        out = dict(sorted(out.items()))
        return out if detail else list(out)

    # -- reading and writing -----------------------------------------------------------------------------------

    def get_file(self, rpath, lpath, callback=None, outfile=None, **kwargs):
        volume, inner = self._split(rpath)
        if outfile is not None:
            self.volume(volume).read_file_into_fileobj(inner, outfile)
            return
        with open(lpath, "wb") as f:
            self.volume(volume).read_file_into_fileobj(inner, f)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        volume, inner = self._split(rpath)
        if not inner:
            raise ValueError(f"{rpath!r} names a whole volume, not a file in it")
        # force=True: replacing a file is what every writer here means (a status file, a newer checkpoint).
        with self.volume(volume).batch_upload(force=True) as batch:
            batch.put_file(lpath, "/" + inner)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        volume, inner = self._split(path)
        if "r" in mode:
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
            self.get_file(path, None, outfile=spool)
            spool.seek(0)
            return spool
        if "w" in mode:
            return _UploadOnClose(self, path)
        raise NotImplementedError(f"mode {mode!r} is not supported on modal:// (use rb or wb)")

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self.put_file(io.BytesIO(value), path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        buffer = io.BytesIO()
        self.get_file(path, None, outfile=buffer)
        return buffer.getvalue()[start:end]

    # -- the rest ----------------------------------------------------------------------------------------------

    def rm_file(self, path):
        volume, inner = self._split(path)
        self.volume(volume).remove_file(inner)

    def rm(self, path, recursive=False, maxdepth=None):
        for one in [path] if isinstance(path, str) else path:
            volume, inner = self._split(one)
            if not inner:
                raise ValueError(f"refusing to remove the whole volume {volume!r}")
            self.volume(volume).remove_file(inner, recursive=recursive)

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # directories exist implicitly on a Volume

    def makedirs(self, path, exist_ok=False):
        pass

    def created(self, path):
        return self.info(path).get("mtime")

    def modified(self, path):
        return self.info(path).get("mtime")


class _UploadOnClose:
    """A writable file that spools locally and becomes one Volume upload when closed, so it lands whole; a write
    that fails inside a `with` block uploads nothing."""

    def __init__(self, fs: ModalVolumeFileSystem, path: str):
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self._fs, self._path, self.closed = fs, path, False

    def write(self, data) -> int:
        return self._spool.write(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass  # the file lands whole on close (fsspec.open flushes before closing)

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._spool.seek(0)
        try:
            self._fs.put_file(self._spool, self._path)
        finally:
            self._spool.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self.closed = True
            self._spool.close()
