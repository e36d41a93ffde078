"""`runner plan`: what a run will do, on how many GPUs, for how many hours and dollars; spends nothing."""

from __future__ import annotations

import click

from .options import make_plan, plan_options


@click.command(short_help="Show the phases, commands, hours and dollars of a run; spends nothing.")
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (the input of `runner node run --plan`).")
def plan(as_json, **params):
    """Build the plan for a recipe × model × GPU count and show what it will run and cost."""
    the_plan = make_plan(**params)
    if as_json:
        click.echo(the_plan.to_json())
        return
    from ..plan_view import print_plan

    print_plan(the_plan)
