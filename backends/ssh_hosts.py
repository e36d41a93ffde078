"""Several SSH hosts, one run: `runner up --backend ssh --host A --host B --nodes 2`.

Every host gets the node agent with the same rendezvous: the first host is node rank 0 (the leader, and torchrun's
master at its address and `--master-port`), the others follow in the order given; all carry one new launch id.
All hosts are preflighted (login, GPUs, driver, disk, mode) before anything is installed or started on any. On
each host the run has its own folder (`<run id>` on the first, `<run id>.node<R>` on the others) and its own
scratch, so hosts that share a home folder (NFS, or two names of one machine) do not collide. One handle covers
the run: `ssh://USER@A:PORT/RUN?identity=KEY&node=USER@B:PORT`; `runner logs` follows the leader's log, `status`
reads every host, `down` stops every host.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, quote, urlsplit

from .base import BackendError, RunInfo, State
from .ssh_conn import Target

DEFAULT_MASTER_PORT = 29500
STATE_ORDER = (State.RUNNING, State.PENDING, State.FAILED, State.CANCELLED, State.UNKNOWN, State.SUCCEEDED)


@dataclass(frozen=True)
class HostGroup:
    """The launches of a run on several hosts (ssh.HostLaunch each), node rank = position."""

    launches: tuple
    launch_id: str
    master: str


def check_count(hosts: list[str], nodes: int) -> None:
    if len(hosts) == nodes:
        return
    if nodes == 1:
        raise BackendError(f"{len(hosts)} hosts were given, but the plan is for one node.",
                           [f"Add --nodes {len(hosts)} to train on all of them as one world, or give one --host."])
    raise BackendError(f"The plan is for {nodes} nodes, but {len(hosts)} host(s) were given.",
                       [f"Give one --host per node ({nodes}), the first one the leader, or make the plan with --nodes {len(hosts)}."])


def new_launch_id(run_id: str) -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def folder_id(run_id: str, node_rank: int) -> str:
    """The run's folder on a host: the run id on the leader, `<run id>.node<R>` on the others."""
    return run_id if node_rank == 0 else f"{run_id}.node{node_rank}"


def scratch_for(node_rank: int, scratch: str | None) -> str:
    base = scratch or "~/.nanochat-runner/scratch"
    return base if node_rank == 0 else f"{base.rstrip('/')}-node{node_rank}"


def node_commands(node, targets: list[Target], master_port: int, launch_id: str) -> list:
    """Each host's `runner node run`: the same rendezvous (the first host's address), its own rank."""
    master = f"{targets[0].host}:{master_port}"
    return [node.with_(nnodes=len(targets), node_rank=rank, master=master, launch_id=launch_id) for rank in range(len(targets))]


def group_handle(targets: list[Target], run_id: str) -> str:
    """The first host's handle, plus every other host as a `node` parameter."""
    url = targets[0].url(run_id)
    extra = "&".join(f"node={quote(str(t), safe='@:')}" for t in targets[1:])
    return url + ("&" if "?" in url else "?") + extra if extra else url


def followers_in(handle: str) -> list[Target]:
    """The other hosts a handle names (none for a run on one host); they log in with the leader's key."""
    first, _ = Target.from_url(handle)
    nodes = parse_qs(urlsplit(handle if "://" in handle else "ssh://" + handle).query).get("node", [])
    return [replace(Target.parse(text), identity=first.identity) for text in nodes]


def combined(handle: str, infos: list[RunInfo | None]) -> RunInfo | None:
    """One RunInfo for the run from each host's: the leader's facts, the state that matters most (any host still
    running: running; any failed: failed), every host named in the detail."""
    if infos[0] is None:
        return None
    states = [i.state if i else State.UNKNOWN for i in infos]
    state = next(s for s in STATE_ORDER if s in states)
    details = [f"node {rank}: {info.state.value} ({info.detail})" if info else f"node {rank}: no run folder" for rank, info in enumerate(infos)]
    leader = infos[0]
    exit_code = leader.exit_code if state == leader.state else next((i.exit_code for i in infos if i and i.state == state), None)
    return replace(leader, handle=handle, state=state, exit_code=exit_code, detail="; ".join(details))
