"""Preflight of a Slurm run, before anything is submitted: what the cluster says (sinfo, scontrol) against the plan.

One script on the submit host (this machine, or the login node over SSH) gathers the facts; the checks here turn
them into notes or a `PreflightError` with the fix:
- the partition exists (the named one, or the cluster's default) and is up, with enough usable nodes;
- GPUs per node: Slurm's gres `gpu` count of the partition's nodes, or `--node-gpus N` on a cluster that hands out
  whole GPU nodes without tracking GPUs as gres;
- the time limit (`--time`, else the partition's default or maximum) against the plan's estimate (runner/estimate.py):
  a phase longer than the limit must be one that resumes from checkpoints (it then takes several jobs; `--requeue`
  chains them), a phase without checkpoints that cannot finish within one job is refused;
- no job of the same run still queued or running; the container runtime asked for is there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import PreflightError
from .slurm_script import format_time, parse_time

UNUSABLE_STATES = ("down", "drain", "drng", "fail", "inval", "maint", "unk", "boot_fail", "future", "no_respond")
_GPU_RE = re.compile(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)")


@dataclass
class Partition:
    name: str
    default: bool = False
    state: str = "UP"
    max_time: int | None = None  # seconds; None: unlimited
    default_time: int | None = None
    total_nodes: int = 0


@dataclass
class Node:
    name: str
    partitions: list[str]
    gpus: int
    state: str

    @property
    def usable(self) -> bool:
        return not self.state.rstrip("*~#!%$@^-+").lower().startswith(UNUSABLE_STATES)


@dataclass
class ClusterFacts:
    home: str = ""
    has_sbatch: bool = False
    partitions: dict[str, Partition] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    active_jobs: list[str] = field(default_factory=list)  # ids of queued/running jobs of this run's name
    pyxis: bool = False
    apptainer: bool = False
    errors: str = ""


def facts_script(job_name: str) -> str:
    """Bash for the submit host; its output is parsed by `parse_facts`."""
    return "\n".join([
        'echo "home=$HOME"',
        'command -v sbatch >/dev/null 2>&1 && echo "sbatch=yes"',
        'command -v apptainer >/dev/null 2>&1 && echo "apptainer=yes"',
        'srun --help 2>/dev/null | grep -q -- --container-image && echo "pyxis=yes"',
        'echo "@@partitions"; scontrol show partition -o 2>&1',
        "echo \"@@nodes\"; sinfo -h -N -o '%N|%P|%G|%t' 2>&1",
        f"echo \"@@active\"; squeue -h -n {job_name} -o %i 2>&1",
        'echo "@@end"',
    ]) + "\n"


def _sections(out: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in out.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = []
        elif line.strip():
            sections[current].append(line.strip())
    return sections


def gres_gpus(gres: str) -> int:
    return sum(int(n) for n in _GPU_RE.findall(gres or ""))


def parse_facts(out: str) -> ClusterFacts:
    sections = _sections(out)
    head = dict(line.split("=", 1) for line in sections.get("", []) if "=" in line)
    facts = ClusterFacts(home=head.get("home", ""), has_sbatch=head.get("sbatch") == "yes",
                         pyxis=head.get("pyxis") == "yes", apptainer=head.get("apptainer") == "yes")
    errors = []
    for line in sections.get("partitions", []):
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if "PartitionName" not in fields:
            errors.append(line)
            continue
        facts.partitions[fields["PartitionName"]] = Partition(
            name=fields["PartitionName"], default=fields.get("Default") == "YES", state=fields.get("State", "UP"),
            max_time=parse_time(fields.get("MaxTime")), default_time=parse_time(fields.get("DefaultTime")),
            total_nodes=int(fields.get("TotalNodes", "0") or 0))
    for line in sections.get("nodes", []):
        parts = line.split("|")
        if len(parts) != 4:
            errors.append(line)
            continue
        name, partition, gres, state = parts
        facts.nodes.append(Node(name, [partition.rstrip("*")], gres_gpus(gres), state))
    facts.active_jobs = [line for line in sections.get("active", []) if line.isdigit()]
    facts.errors = "\n".join(errors)
    return facts


def choose_partition(facts: ClusterFacts, name: str | None) -> Partition:
    names = ", ".join(p.name + (" (default)" if p.default else "") for p in facts.partitions.values()) or "(none)"
    if not facts.partitions:
        raise PreflightError(f"Slurm lists no partitions (`scontrol show partition`): {facts.errors.strip()[-400:] or 'no output'}",
                             ["Check that the controller answers: `sinfo` on the submit host must list partitions."])
    if name:
        if name not in facts.partitions:
            raise PreflightError(f"The cluster has no partition {name!r}; it has: {names}.",
                                 ["Pick one of those with --partition (`sinfo -s` lists them with their limits)."])
        partition = facts.partitions[name]
    else:
        defaults = [p for p in facts.partitions.values() if p.default]
        if not defaults:
            raise PreflightError(f"The cluster has no default partition; it has: {names}.", ["Name one with --partition."])
        partition = defaults[0]
    if partition.state.upper() != "UP":
        raise PreflightError(f"Partition {partition.name} is {partition.state}: jobs there would not start.",
                             [f"Use another partition ({names}) or ask the admins when {partition.name} is back up."])
    return partition


def check_nodes(facts: ClusterFacts, partition: Partition, plan, node_gpus: int | None) -> str:
    """Enough usable nodes with enough GPUs each; returns a note for the log."""
    nodes = [n for n in facts.nodes if partition.name in n.partitions]
    usable = [n for n in nodes if n.usable]
    if len(usable) < plan.nodes:
        raise PreflightError(
            f"The plan runs on {plan.nodes} node(s), but partition {partition.name} has {len(usable)} usable "
            f"(of {len(nodes)}: {', '.join(f'{n.name} {n.state}' for n in nodes) or 'none'}).",
            [f"Use --nodes {len(usable)} or fewer, or a partition with more nodes (--partition)." if usable else
             "Use a partition with up nodes (--partition), or ask the admins to resume them."],
        )
    if not plan.on_gpus:
        return f"nodes: {len(usable)} usable in {partition.name}; the plan runs on the CPU (the rehearsal)"
    if node_gpus is not None:
        if node_gpus < plan.gpus:
            raise PreflightError(f"--node-gpus {node_gpus}: the plan needs {plan.gpus} GPUs per node.",
                                 [f"Plan for {node_gpus} GPUs per node (--gpus {node_gpus}) or use nodes with more."])
        return f"nodes: {len(usable)} usable in {partition.name}; {node_gpus} GPU(s) each as stated by --node-gpus (Slurm tracks none)"
    with_gpus = [n for n in usable if n.gpus >= plan.gpus]
    if len(with_gpus) < plan.nodes:
        most = max((n.gpus for n in usable), default=0)
        gpu_partitions = sorted({p for n in facts.nodes if n.usable and n.gpus >= plan.gpus for p in n.partitions})
        fixes = [f"Use a partition whose nodes have {plan.gpus}+ GPUs: --partition {gpu_partitions[0]}" + (f" (or {', '.join(gpu_partitions[1:])})" if gpu_partitions[1:] else "")] if gpu_partitions else []
        fixes += [f"Plan for {most} GPUs per node (--gpus {most})." if most else
                  "If the cluster hands out whole GPU nodes without tracking GPUs as gres, say how many each has: --node-gpus N.",
                  "Or rehearse on the nodes' CPUs: --smoke --device cpu."]
        raise PreflightError(
            f"The plan needs {plan.nodes} node(s) with {plan.gpus} GPU(s) each (Slurm gres gpu), but partition "
            f"{partition.name} has {len(with_gpus)} such node(s) (most GPUs on a node: {most}).", fixes)
    return f"nodes: {len(with_gpus)} in {partition.name} with {plan.gpus}+ GPU(s) each (gres gpu)"


def check_time(plan, partition: Partition, time_text: str | None, signal_before_sec: int, requeue: bool) -> list[str]:
    """The job's time limit against the plan's estimate; returns notes, refuses what cannot finish."""
    from runner.estimate import estimate_phases

    asked = parse_time(time_text)
    if asked is not None and partition.max_time is not None and asked > partition.max_time:
        raise PreflightError(f"--time {time_text} is longer than partition {partition.name}'s limit of {format_time(partition.max_time)}.",
                             [f"Use --time {format_time(partition.max_time)} or less (a resumable phase continues in the next job), or another partition."])
    limit = asked if asked is not None else (partition.default_time or partition.max_time)
    estimates = {e.phase: e.hours * 3600 for e in estimate_phases(plan)}
    total = sum(estimates.values())
    if limit is None:
        return [f"time: no limit on partition {partition.name}; the plan takes about {format_time(total)} (estimate)"]
    where = f"--time {time_text}" if asked is not None else f"partition {partition.name}'s {'default' if partition.default_time else 'maximum'} time limit"
    if signal_before_sec >= limit:
        raise PreflightError(f"--signal-before {signal_before_sec} s leaves no time to run within {where} ({format_time(limit)}).",
                             ["Give the job more time (--time) or stop the nodes closer to the limit (--signal-before 60)."])
    usable = limit - signal_before_sec
    notes = [f"time: {format_time(limit)} per job ({where}); the plan takes about {format_time(total)} (estimate)"]
    too_long = []
    for phase in plan.phases:
        seconds = estimates.get(phase.name, 0.0)
        if seconds <= usable:
            continue
        if any(step.resume_flag for step in phase.steps):
            jobs = int(seconds // usable) + 1
            notes.append(f"time: phase {phase.name} (about {format_time(seconds)}) resumes from its checkpoints over about {jobs} jobs"
                         + (" (--requeue chains them)" if requeue else "; add --requeue to chain them, or run `runner up` again after each"))
        else:
            too_long.append(f"{phase.name} (about {format_time(seconds)})")
    if too_long:
        longest = max(estimates[p.split(" ")[0]] for p in too_long)
        raise PreflightError(
            f"Phase(s) {', '.join(too_long)} cannot stop and resume (no checkpoints), but each job gets only "
            f"{format_time(usable)} ({where}, less --signal-before {signal_before_sec} s to stop cleanly).",
            [f"Give each job at least --time {format_time(longest * 1.25 + signal_before_sec)}"
             + (f" (partition {partition.name} allows {format_time(partition.max_time)})" if partition.max_time else ""),
             "or use a partition with a longer limit (--partition)."],
        )
    return notes


def check_container(facts: ClusterFacts, container: str, where: str) -> str | None:
    if container == "pyxis" and not facts.pyxis:
        raise PreflightError(f"srun on {where} has no --container-image: the Pyxis plugin is not installed there.",
                             ["Use --container apptainer, or --container none (a bare install on the nodes)."])
    if container == "apptainer" and not facts.apptainer:
        raise PreflightError(f"apptainer is not on the PATH of {where}.",
                             ["Load it (e.g. `module load apptainer` in your shell profile), or use --container pyxis|none."])
    if container != "none":
        return f"container: {container} found on {where} (the compute nodes must have it too)"
    return None
