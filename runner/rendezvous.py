"""Where one node agent stands among a run's nodes: how many nodes, its rank, the master's address, the launch.

`runner node run --nnodes N --node-rank R --master ADDR:PORT --launch-id ID` states it; where flags are absent the
engine that started the agent states it: Slurm (`SLURM_NNODES`, `SLURM_NODEID`, `SLURM_JOB_ID`, with the master
in `MASTER_ADDR`/`MASTER_PORT` as the batch script exports it), torchrun's elastic agent (`PET_NNODES`,
`PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`, `PET_RDZV_ID`) or `RUNNER_LAUNCH_ID`; a Slurm launch is
`<job id>.<SLURM_RESTART_COUNT>`, so a requeued job is a new launch. The launch id names one
start of the run (a Slurm job id, an SSH launch): followers wait for their own launch's leader, never for a marker a
stale earlier launch left in storage. Node rank 0 is the leader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import PlanError

DEFAULT_MASTER_PORT = 29500  # torchrun's default
LAUNCH_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

# Engine variables per field, in order of preference.
ENGINE_NNODES = ("SLURM_NNODES", "SLURM_JOB_NUM_NODES", "PET_NNODES")
ENGINE_NODE_RANK = ("SLURM_NODEID", "PET_NODE_RANK")
ENGINE_MASTER_ADDR = ("PET_MASTER_ADDR", "MASTER_ADDR")
ENGINE_MASTER_PORT = ("PET_MASTER_PORT", "MASTER_PORT")


def engine_launch_id(env: dict) -> str | None:
    """The engine's id of this launch. A requeued Slurm job keeps its job id, so its restart count is part of it."""
    if env.get("RUNNER_LAUNCH_ID"):
        return env["RUNNER_LAUNCH_ID"]
    if env.get("SLURM_JOB_ID"):
        return f"{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}"
    return env.get("PET_RDZV_ID") or None


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = DEFAULT_MASTER_PORT
    launch_id: str = ""

    @property
    def multinode(self) -> bool:
        return self.nnodes > 1

    @property
    def is_leader(self) -> bool:
        return self.node_rank == 0

    @property
    def master(self) -> str:
        return f"{self.master_addr}:{self.master_port}"

    def torchrun_args(self, nproc_per_node: int) -> list[str]:
        """torchrun's arguments for this node: a static rendezvous at the master (every node names the same
        address and its own rank), or --standalone on one node."""
        if not self.multinode:
            return ["--standalone", f"--nproc_per_node={nproc_per_node}"]
        return [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", f"--nproc_per_node={nproc_per_node}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}"]

    def describe(self) -> str:
        if not self.multinode:
            return "one node"
        role = "leader" if self.is_leader else "follower"
        return f"node {self.node_rank} of {self.nnodes} ({role}), master {self.master}, launch {self.launch_id}"


def _first(env: dict, names: tuple[str, ...]) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def _int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PlanError(f"{what} {value!r} is not a whole number.", [f"Give {what} as a number, e.g. {what} 2."]) from None


def parse_master(master: str) -> tuple[str, int]:
    host, sep, port = master.rpartition(":")
    if not sep:
        host, port = master, str(DEFAULT_MASTER_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PlanError(f"--master {master!r} is not ADDR:PORT.", ["Give the first node's address and a free port, e.g. --master 10.0.0.1:29500."])
    return host.strip("[]"), int(port)


def resolve(nnodes: int | None = None, node_rank: int | None = None, master: str | None = None, launch_id: str | None = None,
            env: dict | None = None) -> Rendezvous:
    """The rendezvous from the flags given, the engine's variables for the rest; refuses what cannot meet."""
    env = dict(os.environ) if env is None else env
    nnodes = _int(nnodes if nnodes is not None else _first(env, ENGINE_NNODES) or 1, "--nnodes")
    node_rank = _int(node_rank if node_rank is not None else _first(env, ENGINE_NODE_RANK) or 0, "--node-rank")
    if nnodes < 1:
        raise PlanError(f"--nnodes {nnodes} must be at least 1.", ["Give the number of nodes of the run."])
    if not 0 <= node_rank < nnodes:
        raise PlanError(f"--node-rank {node_rank} is not a rank of {nnodes} node(s).", [f"Give a node rank from 0 to {nnodes - 1} (0: the leader)."])
    if nnodes == 1:
        return Rendezvous(launch_id=launch_id or engine_launch_id(env) or "")
    if master:
        addr, port = parse_master(master)
    else:
        addr = _first(env, ENGINE_MASTER_ADDR) or ""
        port = _int(_first(env, ENGINE_MASTER_PORT) or DEFAULT_MASTER_PORT, "--master port")
    if not addr:
        raise PlanError(f"{nnodes} nodes need the master's address.", ["Add --master ADDR:PORT (the node-rank-0 host and a free port), or export MASTER_ADDR and MASTER_PORT."])
    launch_id = launch_id or engine_launch_id(env) or ""
    if not launch_id or not set(launch_id) <= LAUNCH_ID_CHARS:
        raise PlanError(f"{nnodes} nodes need a launch id (letters, digits, '.', '-', '_'); got {launch_id!r}.",
                        ["Add --launch-id ID, the same on every node of this launch and new for each launch (a Slurm job id, a timestamp)."])
    return Rendezvous(nnodes, node_rank, addr, port, launch_id)
