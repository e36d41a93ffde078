"""Preflight arithmetic and verdicts shared by backends: disk a plan needs, and what a GPU probe container said.

Nothing here talks to an engine; backends gather the facts (free bytes per folder, the probe's output and exit)
and these functions turn them into a pass or a `PreflightError` that says how to fix it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from runner.estimate import disk_need  # noqa: F401 - the disk model lives beside the time model

from .base import PreflightError

GB = 1e9

# The probe prints NVIDIA_VISIBLE_DEVICES and, where the toolkit mounted it, `nvidia-smi -L` (one line per GPU).
PROBE_SCRIPT = (
    'echo "visible=${NVIDIA_VISIBLE_DEVICES:-}"; '
    "if command -v nvidia-smi >/dev/null 2>&1; then echo nvidia-smi=yes; nvidia-smi -L; exit $?; "
    "else echo nvidia-smi=no; fi"
)
NO_DRIVER_MARKERS = ("could not select device driver", "unknown or invalid runtime name: nvidia")
TOOLKIT_FIXES = [
    "Install the NVIDIA driver and the NVIDIA container toolkit on this machine "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html).",
    "Register it with Docker and restart the engine: `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`.",
    "Check with `docker run --rm --gpus all nvidia/cuda:12.8.1-base-ubuntu24.04 nvidia-smi`, then run this command again.",
]


def existing_parent(path: str | Path) -> Path:
    """The folder itself or its nearest existing parent (a storage folder may not exist yet)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


@dataclass
class DiskPlace:
    role: str  # "storage", "scratch"
    path: Path
    fix: str


def check_disk(plan, places: list[DiskPlace]) -> list[str]:
    """Every place holds a full copy of what the plan writes; places on one filesystem share its free space."""
    need = disk_need(plan)
    by_device: dict[int, list[DiskPlace]] = {}
    for place in places:
        by_device.setdefault(os.stat(existing_parent(place.path)).st_dev, []).append(place)
    notes = []
    for group in by_device.values():
        free = shutil.disk_usage(existing_parent(group[0].path)).free
        wanted = need["total"] * len(group)
        where = " and ".join(f"{p.role} ({p.path})" for p in group)
        if free < wanted:
            parts = ", ".join(f"{k} {v / GB:.1f} GB" for k, v in need.items() if k != "total")
            raise PreflightError(
                f"Not enough free disk for {plan.model}: {where} need about {wanted / GB:.1f} GB ({parts}, "
                f"+10%{', for each of them' if len(group) > 1 else ''}), but only {free / GB:.1f} GB are free.",
                ["Free some space there, or", *dict.fromkeys(p.fix for p in group)],
            )
        notes.append(f"disk: {free / GB:.0f} GB free for {where}, about {wanted / GB:.1f} GB needed")
    return notes


def probe_verdict(output: str, exit_code: int | None, start_error: str, wanted: int | None) -> str:
    """Judge the GPU probe: a start error or a failing nvidia-smi raise; returns a note for the log.

    `wanted` is the number of GPUs the run needs (None when it asked for "all")."""
    lowered = start_error.lower()
    if any(marker in lowered for marker in NO_DRIVER_MARKERS):
        raise PreflightError(f"Docker cannot give containers GPUs: it has no NVIDIA runtime ({start_error.strip()}).", TOOLKIT_FIXES)
    if "unknown device" in lowered or "invalid device" in lowered:
        raise PreflightError(
            f"The GPUs asked for do not exist on this machine ({start_error.strip()}).",
            ["Ask for fewer GPUs (--gpus N, a plan for N GPUs) or for existing ones (--gpu-ids), and check `nvidia-smi -L`."],
        )
    if start_error:
        raise PreflightError(
            f"A probe container with the run's GPU request did not start: {start_error.strip()}",
            ["See the engine's own words by hand: `docker run --rm --gpus 1 --entrypoint true IMAGE`.", "Fix what it reports, then run this command again."],
        )
    lines = output.splitlines()
    visible = next((line.split("=", 1)[1] for line in lines if line.startswith("visible=")), "")
    if visible in ("", "void", "none"):
        raise PreflightError(f"The GPU request did not reach the container (NVIDIA_VISIBLE_DEVICES={visible!r}).", TOOLKIT_FIXES)
    if "nvidia-smi=yes" not in lines:
        return f"GPUs: the engine passed NVIDIA_VISIBLE_DEVICES={visible} (no nvidia-smi in the container to count them)"
    gpus = [line for line in lines if line.startswith("GPU ")]
    if exit_code != 0:
        raise PreflightError(
            f"nvidia-smi fails inside the container (exit {exit_code}): {' '.join(lines[-3:])}",
            ["Check the driver on the host: `nvidia-smi` must list every GPU.", *TOOLKIT_FIXES[1:]],
        )
    if wanted is not None and len(gpus) < wanted:
        raise PreflightError(
            f"The run needs {wanted} GPUs but the container sees {len(gpus)}:\n  " + "\n  ".join(gpus or ["(none)"]),
            [f"Make a plan for {len(gpus)} GPUs (--gpus {len(gpus)}, when that is 1, 2, 4 or 8), or", "free the busy GPUs, or run on a machine with more."],
        )
    return f"GPUs: {len(gpus)} visible ({'; '.join(g.split(' (UUID')[0] for g in gpus)})"
