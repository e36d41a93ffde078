"""Compare-and-swap of one small object in storage, the primitive under the model lease (lease.py).

`slot(storage, rel)` gives an object with `read() -> (text, version)`, `swap(text, version) -> new version` (raises
`Conflict` when the object is no longer at `version`; version None means "create, it must not exist") and
`delete(version)`. S3 uses conditional PUTs (If-None-Match / If-Match on the ETag); a local folder compares under
an flock'd lock file and writes by atomic rename; any other filesystem writes, pauses and reads back.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import time
import uuid

READ_BACK_PAUSE_SEC = 1.0


class Conflict(Exception):
    """A compare-and-swap lost: the object is not at the version we read."""


class _S3Slot:
    """The lease object on S3: conditional PUTs, the ETag as the version."""

    def __init__(self, storage, rel: str):
        self.fs = storage.fs
        self.bucket, _, self.key = storage.path(rel).partition("/")
        self.fallback = _ReadBackSlot(storage, rel)
        self.conditional = True  # until the server says it cannot

    def read(self) -> tuple[str | None, str | None]:
        try:
            response = self.fs.call_s3("get_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None, None
        return _read_body(self.fs, response["Body"]), response.get("ETag")

    def swap(self, text: str, version: str | None) -> str:
        if not self.conditional:  # compare the ETag, then write and read back as on any other filesystem
            current, tag = self.read()
            if tag != version:
                raise Conflict()
            self.fallback.swap(text, current)
            return self.read()[1]
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=text.encode(), **condition)
        except Exception as e:  # noqa: BLE001 - s3fs maps 412/409 to various exception types
            if _is_precondition_failure(e):
                raise Conflict() from None
            if _is_unsupported(e):
                self.conditional = False
                return self.swap(text, version)
            raise
        return response.get("ETag")

    def delete(self, version: str | None) -> None:
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def _read_body(fs, body) -> str:
    from fsspec.asyn import sync

    async def read():
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read).decode()


def _error_code(error: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore error, or of the one s3fs translated into `error`."""
    for candidate in (error, error.__cause__, error.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", "")), int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return "", 0


def _is_precondition_failure(error: Exception) -> bool:
    if isinstance(error, FileExistsError):  # s3fs's name for a failed If-None-Match
        return True
    code, status = _error_code(error)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _is_unsupported(error: Exception) -> bool:
    """The server does not implement conditional PUTs (older S3-compatible stores answer 501)."""
    code, status = _error_code(error)
    return code == "NotImplemented" or status == 501


class _LocalSlot:
    """The lease file in a local folder: compare under an exclusive flock, write by atomic rename."""

    def __init__(self, storage, rel: str):
        self.path = storage.path(rel)
        os.makedirs(posixpath.dirname(self.path), exist_ok=True)

    def read(self) -> tuple[str | None, str | None]:
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return None, None
        return text, text  # the content is its own version

    def _locked(self):
        fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def swap(self, text: str, version: str | None) -> str:
        fd = self._locked()
        try:
            if self.read()[1] != version:
                raise Conflict()
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return text
        finally:
            os.close(fd)  # closing releases the flock (also when the process dies)

    def delete(self, version: str | None) -> None:
        fd = self._locked()
        try:
            if self.read()[1] == version:
                os.unlink(self.path)
        finally:
            os.close(fd)


class _ReadBackSlot:
    """Any other filesystem: no atomic compare; write, pause, read back and check the record is still ours."""

    def __init__(self, storage, rel: str):
        self.storage, self.rel = storage, rel

    def read(self) -> tuple[str | None, str | None]:
        self.storage.invalidate()
        try:
            text = self.storage.read_text(self.rel)
        except FileNotFoundError:
            return None, None
        return text, text

    def swap(self, text: str, version: str | None) -> str:
        if self.read()[1] != version:
            raise Conflict()
        self.storage.write_text(self.rel, text)
        time.sleep(READ_BACK_PAUSE_SEC)  # a racing writer lands in this window; the read-back then sees it
        if self.read()[1] != text:
            raise Conflict()
        return text

    def delete(self, version: str | None) -> None:
        if self.read()[1] == version:
            self.storage.remove(self.rel)


def slot(storage, rel: str):
    if storage.is_local:
        return _LocalSlot(storage, rel)
    if storage.url.startswith(("s3://", "s3a://")) and hasattr(storage.fs, "call_s3"):
        return _S3Slot(storage, rel)
    return _ReadBackSlot(storage, rel)
