"""What a storage failure means, and the typed error that tells the user how to fix it.

Failures fall into two kinds. Permanent ones (a full disk, a permission refused locally or by S3, a missing file,
a copy that arrived at the wrong size) fail at once: retrying cannot help, and a retry loop would hide the cause
for minutes. Everything else (a dropped connection, a server restarting, a timeout) is transient and retried
within one budget (storage_url.storage_budget_sec). `explain_storage_error` turns either into a `StorageError`
whose message matches the cause: a local permission problem never reads like an S3 credentials problem.
"""

from __future__ import annotations

import errno
import re

from .errors import RunnerError, StorageError

TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{8}\.part(/[^/]*)?$")  # storage_copy.landing: NAME.<8 hex>.part/NAME
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
S3_DENIED_WORDS = ("accessdenied", "access denied", "forbidden", "403", "allaccessdisabled")
S3_BAD_KEY_WORDS = ("invalidaccesskeyid", "signaturedoesnotmatch", "invalidtoken", "expiredtoken", "access key id", "signature we calculated")


class StorageDiskFull(StorageError):
    """A disk (local storage or scratch) has no space left."""

    exit_code = 6  # as DiskFull: a local disk is too small or filled up


class StoragePermissionDenied(StorageError):
    """The storage (a local folder or an S3 prefix) refuses this user or key."""


class StorageNotAnswering(StorageError):
    """The storage accepted the call but gave no answer within the budget."""


class TransferCancelled(Exception):
    """Raised inside a copy when its batch stops (Ctrl-C, SIGTERM, a failure elsewhere): the copy cleans up."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def is_permission(error: BaseException) -> bool:
    if isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno in PERMISSION_ERRNOS):
        return True
    lowered = f"{type(error).__name__}: {error}".lower()
    return type(error).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs") and any(w in lowered for w in S3_DENIED_WORDS)


def is_permanent(error: BaseException) -> bool:
    """True for a failure that another try cannot fix (so it must not be retried)."""
    return (isinstance(error, (RunnerError, TransferCancelled, FileNotFoundError, IsADirectoryError, NotADirectoryError))
            or is_disk_full(error) or is_permission(error))


def _is_local_disk(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _where(url: str, error: BaseException) -> str:
    """The file the error is about, by its real name (not the temporary one it was being written under)."""
    return TEMP_SUFFIX.sub("", str(getattr(error, "filename", None) or url))


def explain_storage_error(url: str, error: BaseException) -> RunnerError:
    """Turn an s3fs/botocore/OS exception into a StorageError that says how to fix it (a RunnerError, which
    already says its fix, is returned as it is)."""
    if isinstance(error, RunnerError):
        return error
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if is_disk_full(error):
        return StorageDiskFull(
            f"No space left on the disk holding {_where(url, error)} ({text}).",
            ["Free space on that disk, or point --storage / --scratch (RUNNER_SCRATCH) at a bigger disk.",
             "Then run the same command again: files that arrived whole are kept, nothing torn was left behind."],
        )
    if _is_local_disk(url):
        if is_permission(error):
            read_only = getattr(error, "errno", None) == errno.EROFS
            return StoragePermissionDenied(
                f"{'The filesystem is read-only at' if read_only else 'Permission denied for'} {_where(url, error)} (storage {url}; {text}).",
                ["Remount that filesystem read-write, or point --storage at a writable folder." if read_only else
                 "Give the user running the runner write access to that folder (chown/chmod), or point --storage at a folder it can write to.",
                 "Then run the same command again."],
            )
        if isinstance(error, OSError):
            return StorageError(f"Cannot use the storage folder {url} ({text}).", ["Check that the folder exists, is a folder and is on a working disk."])
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or (isinstance(error, FileNotFoundError) and url.startswith("s3")):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return StorageError(f"The bucket of {url} does not exist ({text}).", [f"Create it first, e.g. `aws s3 mb s3://{bucket}` (add --endpoint-url for a non-AWS server)."])
    if any(k in lowered for k in S3_BAD_KEY_WORDS):
        return StoragePermissionDenied(
            f"The storage at {url} refused the credentials ({text}).",
            ["Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --storage-option key=... secret=...).", "Make sure the key may list, read and write under that prefix."],
        )
    if is_permission(error):
        return StoragePermissionDenied(
            f"The storage at {url} refused the credentials or denied access ({text}).",
            ["Make sure the key in AWS_ACCESS_KEY_ID (or --storage-option key=...) may list, read and write under that prefix (its IAM or bucket policy).",
             "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY if the key itself may be wrong."],
        )
    if any(k in lowered for k in ("nocredentials", "unable to locate credentials", "credentials")):
        return StorageError(f"No credentials were found for {url} ({text}).", ["Export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --storage-option key=... secret=...."])
    if any(k in lowered for k in ("connect", "endpoint", "timed out", "timeout", "name or service", "refused", "unreachable")):
        return StorageError(
            f"Cannot reach the storage at {url} ({text}).",
            ["Check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=...) and that the server is up.", "Check the network path from this machine to it."],
        )
    return StorageError(f"The storage at {url} failed a write/read check ({text}).", ["Check the URL, the credentials and the server's logs."])
