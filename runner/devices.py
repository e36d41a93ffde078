"""What this machine computes on: NVIDIA GPUs (counted by nvidia-smi), Apple's MPS, or the CPU.

`runner up` with the `here` backend plans for what is here: a smoke run on NVIDIA GPUs, else the CPU/MPS
rehearsal. Nothing here imports torch (the runner's own environment does not have it); nanochat autodetects the
same device by itself when its scripts start.
"""

from __future__ import annotations

import platform
import shutil
import subprocess

DEVICES = ("cuda", "mps", "cpu")


def nvidia_gpus() -> list[str]:
    """The names of the NVIDIA GPUs nvidia-smi lists (empty: none, or no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode:
        return []
    # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: ...)"
    return [line.split(":", 1)[1].split("(UUID")[0].strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def local_device() -> str:
    """cuda when NVIDIA GPUs are here, mps on Apple silicon, else cpu."""
    if nvidia_gpus():
        return "cuda"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"
