"""`runner up` options of the Slurm backend, as click decorators (imported by the CLI; loads nothing else).

--host, --identity, --accept-new-host-key, --nanochat-src and --wheelhouse are the SSH backend's options, which the
Slurm backend shares (the login node is reached like an SSH host; bare mode installs the same way): SLURM_KEYS
names them too, so `runner up` hands them to whichever of the two backends was chosen.
"""

from __future__ import annotations

import functools

import click

SHARED_WITH_SSH = ("host", "identity", "accept_new_host_key", "nanochat_src", "wheelhouse")
SLURM_KEYS = ("partition", "account", "time_limit", "sbatch_args", "container", "runner_bin", "node_gpus", "requeue",
              "signal_before", *SHARED_WITH_SSH)


def slurm_options(func):
    @click.option("--partition", default=None, metavar="NAME", help="slurm backend: the partition (default: the cluster's default).")
    @click.option("--account", default=None, metavar="NAME", help="slurm backend: the account the job is charged to.")
    @click.option("--time", "time_limit", default=None, metavar="HH:MM:SS", help="slurm backend: each job's time limit (default: the partition's).")
    @click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="KEY[=VALUE]", help="slurm backend: another sbatch option, e.g. qos=high or constraint=h100 (repeatable).")
    @click.option("--container", type=click.Choice(["none", "pyxis", "apptainer"]), default=None, help="slurm backend: run the node agent in --image through Pyxis/enroot or Apptainer (default: none, bare).")
    @click.option("--runner-bin", default=None, metavar="CMD", help="slurm backend, bare: the runner on the nodes, e.g. /shared/venv/bin/runner (default: install it once into the submit host's ~/.nanochat-runner, which the nodes must share).")
    @click.option("--node-gpus", type=click.IntRange(min=0), default=None, metavar="N", help="slurm backend: GPUs each node has where Slurm does not track them as gres (whole nodes are taken; no --gpus-per-node is asked).")
    @click.option("--requeue", is_flag=True, default=None, help="slurm backend: requeue the job near its time limit, on node failure or preemption; it resumes from the newest complete checkpoint.")
    @click.option("--signal-before", type=click.IntRange(min=10), default=None, metavar="SEC", help="slurm backend: stop the node agents (SIGTERM) this long before the time limit (default 120).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper
