"""The one sbatch script a Slurm run is: rendered from a typed `SlurmJob`, never assembled anywhere else.

    #SBATCH --nodes=N --ntasks-per-node=1 [--gpus-per-node=G] [--exclusive] [--partition/--account/--time] ...
    export RUNNER_PLAN_JSON=...            the plan, in the script itself (no shared file needed)
    MASTER_ADDR=<first node's NodeAddr>    node rank 0 runs torchrun's rendezvous
    srun --ntasks-per-node=1 [container] bash -c 'exec runner node run ... --nnodes "$SLURM_NNODES" \
        --node-rank "$SLURM_NODEID" --master "$MASTER_ADDR:$MASTER_PORT" --launch-id "$RUNNER_LAUNCH_ID"'

Every node runs one node agent (`runner node run`, NodeCommand.argv()); the per-node values are Slurm's own
variables, expanded by the task's shell on its node. The launch id is the job id plus Slurm's restart count, so a
requeued job is a new launch and followers never wait on the leader of the attempt before.

Time limit: `--signal=B:USR1@S` tells the batch shell S seconds before the limit; it sends SIGTERM to the node
agents (they stop their phase; checkpoints already in storage stay) and, with `--requeue`, requeues the job, which
resumes from the newest complete checkpoint. `--requeue` also lets Slurm requeue the job after a node failure or a
preemption. The dry run prints exactly this script.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .base import BackendError
from .launch import NodeCommand

CONTAINERS = ("none", "pyxis", "apptainer")
OUTPUT_PATTERN = "nanochat-%j.out"  # in the submit folder, which the job runs in
SBATCH_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# Options the script sets itself: --sbatch-arg may not set them twice.
OWN_KEYS = {"job-name", "nodes", "N", "ntasks-per-node", "gpus-per-node", "output", "o", "open-mode", "export", "signal"}


@dataclass(frozen=True)
class SlurmJob:
    """What one sbatch job runs and asks for. `node` is the node agent's command without the per-node values."""

    run_id: str
    nodes: int
    node: NodeCommand
    plan_json: str
    runner: tuple[str, ...] = ("runner",)  # the runner on the nodes (bare); in a container: the image's `runner`
    gpus_per_node: int = 0  # asked from Slurm (gres); 0: none asked (a CPU plan, or GPUs Slurm does not track)
    exclusive: bool = False  # whole nodes (GPU runs: the agent, its ranks and their workers share the node)
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    requeue: bool = False
    signal_before_sec: int = 120
    sbatch_args: tuple[tuple[str, str | None], ...] = ()
    container: str = "none"
    image: str | None = None
    mounts: tuple[str, ...] = ()  # folders of the host a container must see (storage, scratch)
    scratch_per_node: str | None = None  # a scratch root: each node uses <root>/<its node name>
    env_names: tuple[str, ...] = field(default=(), repr=False)  # variables sbatch hands over (values never rendered)

    @property
    def job_name(self) -> str:
        return f"nanochat-{self.run_id}"


def parse_sbatch_args(values: tuple[str, ...] | list[str]) -> tuple[tuple[str, str | None], ...]:
    """(key, value) pairs from `--sbatch-arg KEY=VALUE` (or a bare KEY for a flag such as `exclusive`)."""
    out = []
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip().lstrip("-")
        if not SBATCH_KEY_RE.match(key):
            raise BackendError(f"--sbatch-arg {text!r} is not KEY=VALUE with an sbatch option name.",
                               ["Write it as --sbatch-arg qos=high or --sbatch-arg constraint=h100 (no leading dashes needed)."])
        if key in OWN_KEYS:
            raise BackendError(f"--sbatch-arg {key} is set by the runner itself.",
                               ["Use --nodes/--gpus for the shape, --time/--partition/--account for those; drop this --sbatch-arg."])
        out.append((key, value if sep else None))
    return tuple(out)


def _directives(job: SlurmJob) -> list[str]:
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    lines += [f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    lines += ["--exclusive"] if job.exclusive else []
    lines += [f"--partition={job.partition}"] if job.partition else []
    lines += [f"--account={job.account}"] if job.account else []
    lines += [f"--time={job.time}"] if job.time else []
    lines += [f"--output={OUTPUT_PATTERN}", "--open-mode=append", "--export=ALL"]
    lines += ["--requeue"] if job.requeue else ["--no-requeue"]
    lines += [f"--signal=B:USR1@{job.signal_before_sec}"]
    lines += [f"--{key}" + (f"={value}" if value is not None else "") for key, value in job.sbatch_args]
    return [f"#SBATCH {line}" for line in lines]


def _container_flags(job: SlurmJob) -> tuple[list[str], list[str]]:
    """(srun flags, the command's prefix) that put the node agent in the image."""
    if job.container == "pyxis":
        flags = [f"--container-image={job.image}"]  # Pyxis runs the command given, not the image's entrypoint
        flags += [f"--container-mounts={','.join(f'{m}:{m}' for m in job.mounts)}"] if job.mounts else []
        return flags, []
    if job.container == "apptainer":
        binds = ["--bind", ",".join(job.mounts)] if job.mounts else []
        return [], ["apptainer", "exec", "--nv", *binds, job.image]
    return [], []


def node_command_line(job: SlurmJob) -> str:
    """What each task runs: the node agent, with this node's place in the run from Slurm's variables."""
    program = ["runner"] if job.container != "none" else list(job.runner)
    per_node = '--nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" --master "$MASTER_ADDR:$MASTER_PORT" --launch-id "$RUNNER_LAUNCH_ID"'
    scratch = f' --scratch {shlex.quote(job.scratch_per_node)}/"$SLURMD_NODENAME"' if job.scratch_per_node else ""

    def agent(node) -> str:
        return f"exec {shlex.join([*program, *node.argv()])}{scratch} {per_node}"

    # A requeued job (preempted, or stopped before its time limit) must resume, not redo --force/--from/--only.
    return (f'if [[ ${{SLURM_RESTART_COUNT:-0}} -gt 0 ]]; then {agent(job.node.continuing())}; '
            f'else {agent(job.node)}; fi')


def render(job: SlurmJob) -> str:
    """The sbatch script, exactly as submitted."""
    if job.container not in CONTAINERS:
        raise BackendError(f"--container {job.container!r} is not one of {', '.join(CONTAINERS)}.", ["Use --container pyxis, apptainer or none."])
    if job.container != "none" and not job.image:
        raise BackendError(f"--container {job.container} needs the image the nodes pull: --image.",
                           ["Push the runner's image to a registry the cluster reaches and pass --image REGISTRY/nanochat-runner:TAG "
                            "(apptainer: also a .sif path).", "Or run bare: --container none."])
    srun_flags, prefix = _container_flags(job)
    inner = node_command_line(job)
    task = shlex.join([*prefix, "bash", "-c", inner])
    srun = 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" --kill-on-bad-exit=1'
    srun += "".join(f" {shlex.quote(flag)}" for flag in srun_flags)
    names = " ".join(job.env_names) or "(none)"
    lines = [
        "#!/bin/bash",
        *_directives(job),
        f"# nanochat-runner: run {job.run_id} on {job.nodes} node(s), one node agent per node, rendered by `runner up --backend slurm`.",
        f"# Environment handed over by sbatch (--export=ALL; values are never written here): {names}",
        "set -uo pipefail",
        "export RUNNER_PLAN_JSON=$(cat <<'RUNNER_PLAN_EOF'",
        job.plan_json,
        "RUNNER_PLAN_EOF",
        ")",
        "# Node rank 0 is the job's first node; torchrun's rendezvous listens there, at the address Slurm reaches it by.",
        'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'MASTER_ADDR=$(scontrol show node "$first" -o 2>/dev/null | sed -n \'s/.* NodeAddr=\\([^ ]*\\).*/\\1/p\')',
        'export MASTER_ADDR=${MASTER_ADDR:-$first}',
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "# A requeued job keeps its id: the restart count makes each attempt its own launch.",
        'export RUNNER_LAUNCH_ID="$SLURM_JOB_ID.${SLURM_RESTART_COUNT:-0}"',
        'echo "[slurm] job $SLURM_JOB_ID (attempt ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST; master $MASTER_ADDR:$MASTER_PORT"',
        "near_limit=0",
        f"on_time_limit() {{ near_limit=1; echo \"[slurm] time limit in {job.signal_before_sec} s: stopping the node agents (SIGTERM)\"; scancel --signal=TERM \"$SLURM_JOB_ID\"; }}",
        "trap on_time_limit USR1",
        f"{srun} \\",
        f"  {task} &",
        "step=$!",
        'wait "$step"; code=$?',
        'while kill -0 "$step" 2>/dev/null; do wait "$step"; code=$?; done  # a trap interrupts wait; the step goes on',
    ]
    if job.requeue:
        lines += [
            'if [[ $near_limit == 1 ]]; then',
            '  echo "[slurm] requeueing job $SLURM_JOB_ID: the next attempt resumes from the newest complete checkpoint"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "fi",
        ]
    else:
        lines += ['[[ $near_limit == 1 ]] && echo "[slurm] stopped at the time limit: run \\`runner up\\` again with the same --run-id to resume"']
    lines += ['echo "[slurm] node agents exited with $code"', 'exit "$code"']
    return "\n".join(lines) + "\n"


# -- Slurm's time strings --------------------------------------------------------------------------------------------

_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str | None) -> int | None:
    """Seconds in a Slurm time limit (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`); None for UNLIMITED/INFINITE/empty."""
    if text is None:
        return None
    text = text.strip()
    if text.upper() in ("", "UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    match = _TIME_RE.match(text)
    if not match:
        raise BackendError(f"--time {text!r} is not a Slurm time.", ["Write it as HH:MM:SS (e.g. --time 12:00:00) or D-HH:MM:SS."])
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    if b is not None:  # MM:SS
        return a * 60 + b
    return a * 60  # MM


def format_time(seconds: float) -> str:
    seconds = int(seconds + 0.999)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text
