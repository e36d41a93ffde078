"""`runner node run`: the node agent, on the GPU machine itself (inside the image, or on a bare host)."""

from __future__ import annotations

import sys

import click

from .options import lease_options, make_plan, node_options, plan_options, storage_option


@click.group(short_help="Commands that run on the GPU node itself.")
def node():
    """Commands that run on the GPU node (inside the image, or on a bare host)."""


@node.command("run", short_help="Run a plan's phases against a storage URL (the node agent).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None, help="Plan JSON from `runner plan --json`; without it, a plan is built from the plan options.")
@click.option("--plan-json", envvar="RUNNER_PLAN_JSON", default=None, help="The plan itself as JSON text (how backends hand it to a container).")
@plan_options
@click.option("--storage", required=True, envvar="RUNNER_STORAGE", help="Where everything lives: a path, file://, s3://bucket/prefix or memory://.")
@storage_option
@click.option("--nanochat-dir", envvar="NANOCHAT_DIR", default=None, help="The nanochat checkout (default: $NANOCHAT_DIR, set by the image).")
@click.option("--python", "python_exe", envvar="RUNNER_NANOCHAT_PYTHON", default=None, help="Interpreter with nanochat's dependencies (default: the checkout's .venv; env RUNNER_NANOCHAT_PYTHON).")
@click.option("--scratch", envvar="RUNNER_SCRATCH", default=None, help="Fast local disk for NANOCHAT_BASE_DIR and caches (default: /scratch if writable, else a temp dir).")
@click.option("--run-id", default=None, help="Name of this run in storage (default: the plan's).")
@click.option("--nnodes", type=int, default=None, help="Nodes of this run (default: the engine's SLURM_NNODES or PET_NNODES, else 1).")
@click.option("--node-rank", type=int, default=None, help="This node's rank, 0 = the leader (default: SLURM_NODEID or PET_NODE_RANK).")
@click.option("--master", default=None, metavar="ADDR:PORT", help="Node rank 0's address and a free port for torchrun's rendezvous (default: MASTER_ADDR/MASTER_PORT or PET_MASTER_*).")
@click.option("--launch-id", default=None, metavar="ID", help="This launch of the run, the same on every node (default: RUNNER_LAUNCH_ID or SLURM_JOB_ID); followers wait for this launch's leader.")
@click.option("--leader-wait-sec", type=click.FloatRange(min=1.0), default=None, help="How long a follower waits for the leader's inputs of a phase (default 1800).")
@node_options
@lease_options
def run(plan_file, plan_json, storage, storage_options, nanochat_dir, python_exe, scratch, run_id, nnodes, node_rank, master, launch_id,
        leader_wait_sec, offline, force, from_phase, only_phase, fresh, heartbeat_sec, steal, steal_now, lease_wait_sec, **params):
    """Execute a plan on this machine: stage inputs from storage, run each phase, push outputs back."""
    from ..node import NodeOptions, run_node
    from ..plan import Plan
    from ..rendezvous import resolve

    if plan_file:
        the_plan = Plan.load(plan_file)
    elif plan_json:
        the_plan = Plan.parse(plan_json, "RUNNER_PLAN_JSON")
    else:
        the_plan = make_plan(**params, run_id=run_id)
    rendezvous = resolve(nnodes, node_rank, master, launch_id)
    options = NodeOptions(
        storage=storage,
        storage_options=list(storage_options),
        nanochat_dir=nanochat_dir,
        python=python_exe,
        scratch=scratch,
        run_id=run_id or the_plan.run_id,
        offline=offline,
        force=force,
        fresh=fresh,
        from_phase=from_phase,
        only_phase=only_phase,
        heartbeat_sec=heartbeat_sec if heartbeat_sec is not None else 60.0,
        steal=steal,
        steal_now=steal_now,
        lease_wait_sec=lease_wait_sec,
        rendezvous=rendezvous,
        **({"leader_wait_sec": leader_wait_sec} if leader_wait_sec is not None else {}),
    )
    sys.exit(run_node(the_plan, options))
