"""What a run on Modal is, computed on the laptop without the SDK: its stages, each stage's call options and node
argv, the run's retry budget, and the app that serves it.

A plan becomes a few calls of the deployed app (backends/modal_app.py): `prep` runs the CPU phases before the
first GPU phase (data download, tokenizer; `hardware = "cpu"` in the recipe), then `gpu_phase` once per GPU phase with the plan's GPU type pinned (`H100!:8`) and CPU and
memory sized for its ranks (on several nodes its clustered twin `gpu_phase_x<N>`: N containers, one per node, with
S3 storage), then `report` on a small CPU container. Each stage runs `runner node run` on the plan
cut after its last phase: earlier phases are skipped by their markers and the phase keys do not change.

Timeouts come from the plan's estimate × MARGIN + OVERHEAD_SEC. A stage whose estimate does not fit Modal's 24 h
cap gets a 24 h timeout and runs in segments (only a phase that can resume mid-phase may); the retries it needs
are counted into the run's one budget, with SPARE_RETRIES on top for lost machines. Node options stay typed
(`NodeCommand`) until `.argv()`; each stage gets its first-call argv and its continuing argv.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from runner import __version__
from runner.estimate import estimate_phases
from runner.storage import split_url

from .base import BackendError, RunSpec
from .launch import NodeCommand

MODAL_CAP_SEC = 24 * 3600
MARGIN = 1.5  # estimates are at an assumed MFU; a slow node must not be killed by its own timeout
OVERHEAD_SEC = 20 * 60  # container start, staging in and out, torch.compile warm-up
MIN_TIMEOUT_SEC = 30 * 60
SEGMENT_GRACE_SEC = 20 * 60  # = modal_app.SEGMENT_GRACE_SEC
SPARE_RETRIES = 3  # lost machines, hung stages: retried from the run's budget, never per stage
DISK_MIB = 256 * 1024  # = modal_app.DISK_MIB: the scratch disk of prep and gpu_phase
VOLUME_MOUNT = "/vol"
GPU_NAMES = {"H100": "H100!", "H200": "H200", "A100-80GB": "A100-80GB", "B200": "B200"}
CPU_PER_RANK, CPU_BASE = 4.0, 2.0  # torchrun ranks, their data loaders, and the node agent
MEMORY_MIB_PER_RANK, MEMORY_MIB_BASE = 16384, 8192
PREP_RESOURCES = {"cpu": 8.0, "memory": 32768}  # = modal_app.PREP_RESOURCES
REPORT_RESOURCES = {"cpu": 2.0, "memory": 8192}  # = modal_app.REPORT_RESOURCES
APP_PREFIX = "nanochat-runner"
CLUSTER_SIZES = (2, 4)  # = modal_app.CLUSTER_SIZES: clustered GPU stage functions the app deploys (gpu_phase_x<N>)


@dataclass(frozen=True)
class Stage:
    name: str  # shown to people and in the run record
    function: str  # the app's function: prep, gpu_phase or report
    phases: tuple[str, ...]
    node: NodeCommand  # the first call's `runner node run`; retries and later segments run node.continuing()
    options: dict  # with_options, less retries/secrets/volumes (the driver adds those): gpu, cpu, memory, timeout
    est_hours: float
    segment_s: int = 0  # >0: stop the node agent after this long; the retry resumes
    calls: int = 1  # segments the estimate needs


def gpu_string(plan) -> str:
    if plan.gpu_type not in GPU_NAMES:
        raise BackendError(f"Modal has no GPU type {plan.gpu_type!r} here.", [f"Use --gpu-type {' or '.join(GPU_NAMES)}."])
    return f"{GPU_NAMES[plan.gpu_type]}:{plan.gpus}"


def gpu_resources(ranks: int) -> dict:
    """CPU cores and memory (MiB) for a GPU stage of `ranks` ranks (Modal's default is 0.125 cores, 128 MiB)."""
    return {"cpu": CPU_BASE + CPU_PER_RANK * ranks, "memory": MEMORY_MIB_BASE + MEMORY_MIB_PER_RANK * ranks}


def timing(hours: float) -> tuple[int, int, int]:
    """(timeout, segment length or 0, calls) for a stage estimated at `hours`."""
    need = hours * 3600 * MARGIN + OVERHEAD_SEC
    if need <= MODAL_CAP_SEC:
        return max(MIN_TIMEOUT_SEC, math.ceil(need)), 0, 1
    segment = MODAL_CAP_SEC - SEGMENT_GRACE_SEC
    return MODAL_CAP_SEC, segment, math.ceil(need / segment)


def node_storage(storage: str) -> tuple[str, str | None]:
    """(storage URL inside the containers, Volume to mount or None). A Volume is mounted at /vol/VOLUME, so the
    node agent sees a plain folder; S3 is passed through."""
    protocol, path = split_url(storage)
    if protocol == "modal":
        volume, _, inner = path.partition("/")
        return f"{VOLUME_MOUNT}/{volume}" + (f"/{inner}" if inner else ""), volume
    if protocol == "s3":
        return storage, None
    raise BackendError(
        f"Storage {storage} cannot be reached from a Modal container.",
        ["Use a Modal Volume: --storage modal://VOLUME/nanochat (created when missing), or", "an S3 bucket: --storage s3://BUCKET/PREFIX with AWS_* set here."],
    )


def _groups(plan) -> list[tuple[str, tuple[str, ...]]]:
    """(function, phases) in run order, from each phase's `hardware` in the recipe: the CPU phases before the first
    GPU phase together on `prep`, each GPU phase alone on `gpu_phase`, each later CPU phase (the report) on `report`."""
    groups: list[tuple[str, tuple[str, ...]]] = []
    for phase in plan.phases:
        if phase.hardware == "gpu":
            groups.append(("gpu_phase", (phase.name,)))
        elif not groups or groups[-1][0] == "prep":
            groups[-1:] = [("prep", (groups[-1][1] if groups else ()) + (phase.name,))]
        else:
            groups.append(("report", (phase.name,)))
    return groups


def _stage_node(node: NodeCommand, names: list[str], phases: tuple[str, ...]) -> NodeCommand | None:
    """This stage's first-call command, or None when the selection leaves nothing in it. --force and --from become
    `--from <first phase here>` (the sub-plan still holds the earlier phases, already run by earlier stages)."""
    if node.only_phase:
        return node.with_(force=False) if node.only_phase in phases else None
    start = names[0] if node.force else node.from_phase
    if start is None:
        return node
    if names.index(phases[-1]) < names.index(start):
        return None  # wholly before --from
    first = start if start in phases else phases[0]
    return node.with_(force=False, from_phase=first)


def stages(spec: RunSpec) -> list[Stage]:
    """The stages this spec runs, in order."""
    plan = spec.plan
    names = plan.phase_names()
    hours = {e.phase: e.hours for e in estimate_phases(plan)}
    storage_url, volume = node_storage(spec.storage)
    check_cluster(plan, volume)
    node = spec.node_command(storage=storage_url)
    out = []
    for function, phases in _groups(plan):
        stage_node = _stage_node(node, names, phases)
        if stage_node is None:
            continue
        est = sum(hours[n] for n in phases)
        timeout, segment, calls = timing(est)
        if segment and not any(step.resume_flag for step in plan.phase(phases[0]).steps):
            raise BackendError(
                f"Phase {phases[0]} is estimated at {est:.1f} h (×{MARGIN} margin), beyond Modal's 24 h cap, and cannot resume mid-phase.",
                ["Run it with more GPUs (--gpus 8) or a faster --gpu-type, or", "run this plan on another backend (`runner up --backend local`)."],
            )
        if function == "gpu_phase":
            options = {"gpu": gpu_string(plan), **gpu_resources(plan.gpus)}  # per container; a cluster has plan.nodes
            function = cluster_function(plan)
        else:
            options = dict(PREP_RESOURCES if function == "prep" else REPORT_RESOURCES)
        name = "prep" if function == "prep" else phases[0]
        out.append(Stage(name=name, function=function, phases=phases, node=stage_node, options={**options, "timeout": timeout},
                         est_hours=round(est, 3), segment_s=segment, calls=calls))
    return out


def cluster_function(plan) -> str:
    """The app's GPU stage function: `gpu_phase` on one node, its clustered twin (`gpu_phase_x<N>`) on N."""
    return "gpu_phase" if plan.nodes == 1 else f"gpu_phase_x{plan.nodes}"


def check_cluster(plan, volume: str | None) -> None:
    """Several nodes on Modal: a multi-node cluster of a size the app deploys, meeting through S3."""
    if plan.nodes == 1:
        return
    if plan.nodes not in CLUSTER_SIZES:
        raise BackendError(f"Modal clusters of {plan.nodes} nodes are not deployed by this runner's app.",
                           [f"Use --nodes {' or '.join(map(str, CLUSTER_SIZES))} on Modal, or another backend for {plan.nodes} nodes."])
    if volume is not None:
        raise BackendError(f"{plan.nodes} nodes on Modal need S3 storage: the nodes of a cluster exchange records while they run, "
                           "and a Modal Volume shows one container's writes to another only after commits and reloads.",
                           ["Use --storage s3://BUCKET/PREFIX (with AWS_* set here), or --nodes 1 with the Volume."])


def budget(found: list[Stage], spare: int = SPARE_RETRIES) -> int:
    """The run's one retry budget: the segments its long stages need, plus `spare` for lost machines."""
    return sum(s.calls - 1 for s in found) + spare


def sub_plan(plan, last_phase: str, one_node: bool = False) -> dict:
    """The plan as JSON, cut after `last_phase` (the node agent then stops there). `one_node`: a CPU stage of a
    several-node plan runs one agent (its phases run on one process; the earlier GPU phases are done by then)."""
    raw = plan.to_dict()
    raw["phases"] = raw["phases"][: plan.phase_names().index(last_phase) + 1]
    if one_node:
        raw["nodes"] = 1
    return raw


def job(spec: RunSpec, stage: Stage, volume: str | None) -> dict:
    """What a stage function is called with (plain data): both argv lists, never options to parse back."""
    return {"stage": stage.name, "argv": stage.node.argv(), "continuing_argv": stage.node.continuing().argv(),
            "plan_json": json.dumps(sub_plan(spec.plan, stage.phases[-1], one_node=not stage.function.startswith("gpu_phase"))),
            "volume": volume, "segment_s": stage.segment_s}


def image_settings(spec: RunSpec, context: str | None) -> dict:
    """What modal_app.py builds its image from (it reads these from RUNNER_MODAL_* at deploy time)."""
    if spec.image:
        return {"registry": spec.image}
    return {"context": context, "build_args": {"NANOCHAT_REF": spec.plan.commit, "RUNNER_UID": "0", **spec.build_args},
            "force_build": spec.rebuild}


def app_name(spec: RunSpec, settings: dict) -> str:
    """One deployment per runner version and image: `nanochat-runner-0.1.0-a1ccb3dc0b[-<build digest>]`."""
    if "registry" in settings:
        extra = settings["registry"]
    else:
        extra = json.dumps({k: v for k, v in settings["build_args"].items() if k not in ("NANOCHAT_REF", "RUNNER_UID")}, sort_keys=True)
    name = f"{APP_PREFIX}-{__version__}-{spec.plan.commit[:10]}"
    if extra not in ("{}",):
        name += "-" + hashlib.sha256(extra.encode()).hexdigest()[:8]
    return name[:64]
