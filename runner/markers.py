"""Phase markers: which phases are done in a storage, and with which inputs.

A marker is `_runner/markers/<phase>/<key>.json`. The key is the phase's identity: the recipe, the nanochat commit,
the phase's commands with the recipe's runtime placeholders left unfilled (Step.identity) and the keys of the phases
it depends on. Changing what a phase makes, or anything upstream of it, makes it run again; how it runs (the W&B run
name, the checkpoint interval, the device batch, the GPU count) never does. A marker also records which steps succeeded: a phase whose
training succeeded but whose evaluation failed reruns only that evaluation. Writing a marker removes the markers
of the same phase whose outputs overlap (a retrained tokenizer replaces the old one in storage), while a d12 and
a d20 run can share a bucket without evicting each other.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time

from .storage import RUNNER_DIR, Storage

MARKER_DIR = f"{RUNNER_DIR}/markers"


def phase_dependencies(plan) -> dict[str, list[str]]:
    """For each phase, the earlier phases that make something it needs."""
    deps: dict[str, list[str]] = {}
    for i, phase in enumerate(plan.phases):
        deps[phase.name] = [
            earlier.name
            for earlier in plan.phases[:i]
            if any(_overlaps(need, made) for need in phase.needs for made in earlier.makes)
        ]
    return deps


def _overlaps(a: str, b: str) -> bool:
    a, b = a.strip("/") + "/", b.strip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def phase_keys(plan) -> dict[str, str]:
    """A content key per phase, chained through its dependencies."""
    deps = phase_dependencies(plan)
    keys: dict[str, str] = {}
    for phase in plan.phases:
        payload = {
            "recipe": plan.recipe,
            "commit": plan.commit,
            "phase": phase.name,
            "steps": [[s.module, *s.identity] for s in phase.steps],
            "makes": phase.makes,
            "deps": {d: keys[d] for d in deps[phase.name]},
        }
        if plan.device != "cuda" and phase.hardware == "gpu":
            # A rehearsal's model is not the GPU run's (other kernels, no torch.compile on some devices): it never
            # stands in for it. CPU phases (shards, tokenizer) are the same wherever they ran.
            payload["device"] = plan.device
        keys[phase.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return keys


def marker_path(phase: str, key: str) -> str:
    return f"{MARKER_DIR}/{phase}/{key}.json"


def read_marker(storage: Storage, phase: str, key: str) -> dict | None:
    path = marker_path(phase, key)
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a torn or hand-edited marker counts as absent: the phase simply runs again


def write_marker(storage: Storage, phase, key: str, run_id: str, steps_ok: list[str], steps_failed: list[str], steps_skipped: list[str]) -> dict:
    marker = {
        "phase": phase.name,
        "key": key,
        "makes": phase.makes,
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steps_ok": steps_ok,
        "steps_failed": steps_failed,
        "steps_skipped": steps_skipped,
    }
    _evict_overlapping(storage, phase, key)
    storage.write_text(marker_path(phase.name, key), json.dumps(marker, indent=2))
    return marker


def _evict_overlapping(storage: Storage, phase, key: str) -> None:
    """Drop markers of this phase for other keys whose outputs this run has just overwritten."""
    folder = f"{MARKER_DIR}/{phase.name}"
    for name in storage.find(folder):
        other_key = posixpath.basename(name).removesuffix(".json")
        if other_key == key:
            continue
        try:
            other = json.loads(storage.read_text(f"{folder}/{name}"))
        except (FileNotFoundError, json.JSONDecodeError):
            other = {"makes": phase.makes}
        if not phase.makes or any(_overlaps(a, b) for a in other.get("makes", []) for b in phase.makes):
            storage.remove(f"{folder}/{name}")
