"""The `runner` command line: one module per concept, gathered here.

plan_cmd.py (what a run will do and cost), node_cmd.py (the node agent, on the GPU machine), up_cmd.py (start a run
on a backend), watch.py (logs, status, down by handle), storage_cmds.py (report, ls, sync), chat_cmd.py (chat
with a trained model); options.py holds the options several of them share. Every command imports what it needs
inside its own function, so `runner --help` loads only click. User mistakes raise `RunnerError` subclasses, which
click prints as a message with the fix, never as a traceback.
"""

from __future__ import annotations

import click

from .. import __version__
from . import chat_cmd, node_cmd, plan_cmd, storage_cmds, up_cmd, watch


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "RUNNER"})
@click.version_option(__version__, prog_name="runner")
def main():
    """Run Karpathy's nanochat speedrun on any GPUs: plan it, run it on a node, keep every artifact in storage."""


for command in (plan_cmd.plan, node_cmd.node, up_cmd.up, watch.logs, watch.status, watch.down,
                storage_cmds.report, storage_cmds.ls, storage_cmds.sync, chat_cmd.chat):
    main.add_command(command)
