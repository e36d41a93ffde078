"""Shared helper of the download stand-ins: record the call, fail when the network is 'down', write a file."""

import os
from pathlib import Path


def download(kind: str, name: str, folder: str) -> Path:
    calls = os.environ.get("STAND_IN_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(f"{kind} {name}\n")
    if os.environ.get("STAND_IN_NETWORK") == "down":
        raise ConnectionError(f"stand-in: cannot reach the network to fetch {name}")
    path = Path(folder) / (name.replace("/", "--") + ".bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"stand-in content of {name}\n".encode())
    return path
