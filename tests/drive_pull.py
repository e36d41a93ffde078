"""Stage storage:base_data into a local folder with the node agent's own `pull`, as a process of its own that a
test or benchmark can signal: `python -m tests.drive_pull STORAGE_URL LOCAL_FOLDER` (from the repository root).

Exits 130 with "pull interrupted" on Ctrl-C or SIGTERM (SIGTERM stops like Ctrl-C, as in the node agent), else
prints "pulled N files"."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from runner.storage import open_storage
from runner.transfer import SyncState, pull


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(url: str, folder: str) -> int:
    signal.signal(signal.SIGTERM, interrupt)
    local = Path(folder)
    try:
        stats = pull(open_storage(url), "base_data", local, SyncState(local.parent), workers=2, log=print)
    except KeyboardInterrupt:
        print("pull interrupted", flush=True)
        return 130
    print(f"pulled {stats.files} files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
