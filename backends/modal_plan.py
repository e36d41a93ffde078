"""What the Modal backend hands the Modal SDK, computed without importing it: stages, GPUs, timeouts, arguments.

A plan becomes a few Modal functions ("stages"): `prep` runs the CPU-only phases (data download, tokenizer) on a
CPU container, so no GPU is billed while shards download; then one GPU function per remaining phase, pinned to
the plan's GPU type (`H100!:8`: the `!` stops Modal from upgrading an H100 request to another GPU, so timings
compare) and count. Each stage gets its own timeout from the plan's estimate × MARGIN + OVERHEAD_SEC, and each
runs `runner node run` on a plan truncated after its last phase: earlier phases are skipped by their markers and
the phase keys do not change (a phase's key depends only on the phases before it).

Modal caps a call at 24 h. A phase whose estimate does not fit is run in segments: the node agent gets SIGTERM
SEGMENT_GRACE_SEC before the cap (it stops the trainer; finished checkpoints are already uploaded), and the next
call resumes from the newest complete checkpoint. Only resumable phases (base training) may be segmented.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from runner.estimate import estimate_phases
from runner.storage import split_url

from .base import BackendError, RunSpec

CPU_PHASES = ("data", "tokenizer")
MODAL_CAP_SEC = 24 * 3600
MARGIN = 1.5  # estimates are at an assumed MFU; a slow node must not be killed by its own timeout
OVERHEAD_SEC = 20 * 60  # container start, staging in and out, torch.compile warm-up
MIN_TIMEOUT_SEC = 30 * 60
SEGMENT_GRACE_SEC = 20 * 60  # time to stop the trainer, upload what finished and commit, before Modal's cap
DRIVER_TIMEOUT_SEC = MODAL_CAP_SEC
COMMIT_EVERY_SEC = 300  # explicit Volume commits during a stage, on top of Modal's own background commits
VOLUME_MOUNT = "/vol"
GPU_NAMES = {"H100": "H100!", "H200": "H200", "A100-80GB": "A100-80GB", "B200": "B200"}
# Preemption (a lost machine) is retried generously: the node agent resumes; a failing phase exits non-zero and
# is not retried by Modal at all (the stage returns its exit code instead of raising).
RETRIES = {"max_retries": 6, "backoff_coefficient": 2.0, "initial_delay": 10.0, "max_delay": 60.0}  # Modal allows 1-60 s
CPU_STAGE = {"cpu": 8.0, "memory": 32768}  # tokenizer training holds its text sample in memory
DRIVER = {"cpu": 0.25, "memory": 512}
RUNS_DICT = "nanochat-runner-runs"  # a Modal Dict: run id -> {call id, storage, stages done}; the backend's own state
COPY_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


@dataclass
class Stage:
    name: str  # the Modal function's name
    phases: list[str]
    gpu: str | None  # None: a CPU container
    timeout_s: int
    segment_s: int = 0  # >0: stop the node agent after this long and call again (resumes)
    calls: int = 1  # calls the estimate needs (segments)
    est_hours: float = 0.0
    node_args: list[str] = field(default_factory=list)  # first call's extra node arguments (--from, --offline...)
    continue_args: list[str] = field(default_factory=list)  # later calls: never --from/--only (those restart)


def gpu_string(plan) -> str:
    if plan.gpu_type not in GPU_NAMES:
        raise BackendError(f"Modal has no GPU type {plan.gpu_type!r} here.", [f"Use --gpu-type {' or '.join(GPU_NAMES)}."])
    return f"{GPU_NAMES[plan.gpu_type]}:{plan.gpus}"


def _timeout(hours: float) -> tuple[int, int, int]:
    """(timeout, segment length or 0, calls) for a stage estimated at `hours`."""
    need = hours * 3600 * MARGIN + OVERHEAD_SEC
    if need <= MODAL_CAP_SEC:
        return max(MIN_TIMEOUT_SEC, math.ceil(need)), 0, 1
    segment = MODAL_CAP_SEC - SEGMENT_GRACE_SEC
    return MODAL_CAP_SEC, segment, math.ceil(need / segment)


def _split_node_args(args: list[str]) -> tuple[list[str], str | None, str | None, bool]:
    """(pass-through args, --from, --only, --force) from RunSpec.node_args."""
    rest, from_phase, only_phase, force, i = [], None, None, False, 0
    while i < len(args):
        if args[i] in ("--from", "--only"):
            from_phase, only_phase = (args[i + 1], only_phase) if args[i] == "--from" else (from_phase, args[i + 1])
            i += 2
            continue
        force = force or args[i] == "--force"
        if args[i] != "--force":
            rest.append(args[i])
        i += 1
    return rest, from_phase, only_phase, force


def stages(plan, node_args: list[str] = ()) -> list[Stage]:
    """The Modal functions this plan runs as, in order, with the node arguments of each."""
    hours = {e.phase: e.hours for e in estimate_phases(plan)}
    names = plan.phase_names()
    rest, from_phase, only_phase, force = _split_node_args(list(node_args))
    if force:
        from_phase = names[0]
    groups = [[n for n in names if n in CPU_PHASES]] + [[n] for n in names if n not in CPU_PHASES]
    out = []
    for group in groups:
        if not group or (only_phase and only_phase not in group):
            continue
        if from_phase and names.index(group[-1]) < names.index(from_phase):
            continue  # wholly before --from: nothing to run
        est = sum(hours[n] for n in group)
        timeout, segment, calls = _timeout(est)
        if segment and not any(step.resume_flag for step in plan.phase(group[0]).steps):
            raise BackendError(
                f"Phase {group[0]} is estimated at {est:.1f} h (×{MARGIN} margin), beyond Modal's 24 h cap, and cannot resume mid-phase.",
                ["Run it with more GPUs (--gpus 8) or a faster --gpu-type, or", "run this plan on another backend (`runner up --backend local`)."],
            )
        forced = []
        if only_phase:
            forced = ["--only", only_phase]
        elif from_phase:
            first = group[0] if names.index(group[0]) >= names.index(from_phase) else from_phase
            forced = ["--from", first]
        is_gpu = any(n not in CPU_PHASES for n in group)
        out.append(Stage(
            name="prep" if not is_gpu else f"phase-{group[0]}", phases=group, gpu=gpu_string(plan) if is_gpu else None,
            timeout_s=timeout, segment_s=segment, calls=calls, est_hours=round(est, 3), node_args=forced + rest, continue_args=rest,
        ))
    return out


def sub_plan(plan, last_phase: str) -> dict:
    """The plan as JSON, cut after `last_phase` (the node agent then stops there)."""
    raw = plan.to_dict()
    names = plan.phase_names()
    raw["phases"] = raw["phases"][: names.index(last_phase) + 1]
    return raw


def node_storage(storage: str) -> tuple[str, str | None]:
    """(storage URL inside the container, Volume to mount or None). A Volume is mounted at /vol/VOLUME, so the
    node agent sees a plain folder (fast, no API call per file); S3 is passed through."""
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


def image_build_args(spec: RunSpec) -> dict[str, str]:
    """The Dockerfile's build arguments for Modal: the plan's nanochat, and root as the user (Modal adds its own
    Python layers on top of the image, which must be able to write /usr/local)."""
    return {"NANOCHAT_REF": spec.plan.commit, "RUNNER_UID": "0", **spec.build_args}


def render_dockerfile(text: str, build_args: dict[str, str]) -> str:
    """The same Dockerfile with `${VAR:-default}` in COPY sources filled in as Docker would: Modal reads COPY
    sources itself to upload the context, and refuses variables there."""

    def fill(match: re.Match) -> str:
        return build_args.get(match.group(1)) or (match.group(2) or "")

    return "\n".join(COPY_VARIABLE.sub(fill, line) if line.lstrip().upper().startswith("COPY ") else line for line in text.splitlines()) + "\n"


def function_kwargs(stage: Stage) -> dict:
    """What `app.function(...)` gets for a stage, less the image, volumes and secrets (SDK objects)."""
    kwargs = {"name": stage.name, "timeout": stage.timeout_s, "retries": dict(RETRIES)}
    if stage.gpu:
        kwargs["gpu"] = stage.gpu
    else:
        kwargs.update(CPU_STAGE)
    return kwargs


def payload(spec: RunSpec, stage: Stage, storage_url: str, volume: str | None) -> dict:
    """What a stage function is called with: everything it needs, as plain JSON-able data."""
    return {
        "run_id": spec.run_id, "stage": stage.name, "plan_json": json.dumps(sub_plan(spec.plan, stage.phases[-1])),
        "storage": storage_url, "storage_options": list(spec.storage_options), "volume": volume,
        "node_args": stage.node_args, "continue_args": stage.continue_args, "segment_s": stage.segment_s,
        "commit_every_s": COMMIT_EVERY_SEC, "calls": stage.calls, "timeout_s": stage.timeout_s,
    }


def describe_stages(found: list[Stage]) -> list[str]:
    return [
        f"  {s.name:<14} {s.gpu or 'CPU ' + str(CPU_STAGE['cpu']).rstrip('0').rstrip('.') + ' cores':<12} phases {','.join(s.phases):<16} "
        f"est {s.est_hours:6.2f} h  timeout {s.timeout_s / 3600:5.2f} h" + (f"  in {s.calls} segment(s) of {s.segment_s / 3600:.1f} h" if s.segment_s else "")
        + (f"  node args: {' '.join(s.node_args)}" if s.node_args else "")
        for s in found
    ]


def as_dicts(found: list[Stage]) -> list[dict]:
    return [asdict(s) for s in found]
