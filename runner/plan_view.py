"""Printing a plan for people: the phase table with commands, hours and dollars, then the assumptions."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .estimate import assumptions, estimate_phases, prices


def print_plan(plan, console: Console | None = None) -> None:
    console = console or Console()
    shape = plan.shape
    console.print(
        f"[bold]{plan.model}[/] with recipe [bold]{plan.recipe}[/] (nanochat {plan.commit[:7]}) on "
        f"{plan.where()}: depth {plan.depth}, {shape['params_total'] / 1e6:,.0f}M parameters, "
        + (f"{shape['training_tokens'] / 1e9:,.2f}B training tokens, {plan.data['shards']} shards" if not plan.smoke
           else f"smoke sizes (a few steps per phase), {plan.data['shards']} shards")
    )
    if plan.smoke and plan.nodes > 1:
        console.print(f"world size {plan.world_size} ({plan.nodes} nodes × {plan.gpus} GPUs); smoke sizes: device batch 1, "
                      "1,024 tokens per process and step")
    elif plan.on_gpus and not plan.smoke:
        console.print(f"world size {plan.world_size} ({plan.nodes} node(s) × {plan.gpus} GPUs); device batch "
                      f"{shape['device_batch_size']}, gradient accumulation {shape.get('grad_accum_steps', 1)}")
    estimates = estimate_phases(plan)
    backends = list(prices()["dollars_per_gpu_hour"])
    table = Table()
    for column in ["phase", "steps", "GPUs", "hours", *[f"$ {b}" for b in backends]]:
        table.add_column(column, justify="left" if column in ("phase", "steps") else "right")
    for phase, est in zip(plan.phases, estimates):
        steps = ", ".join(step.name + ("" if step.critical else "*") for step in phase.steps)
        gpus = str(max(step.nproc for step in phase.steps))
        if plan.nodes > 1 and any(step.all_gpus for step in phase.steps):
            gpus = f"{plan.nodes}×{gpus}"
        table.add_row(phase.name, steps, gpus, f"{est.hours:.2f}", *[f"{est.dollars(b, plan.gpu_type):,.2f}" for b in backends])
    total_hours = sum(e.hours for e in estimates)
    table.add_row("total", "", "", f"{total_hours:.2f}", *[f"{sum(e.dollars(b, plan.gpu_type) for e in estimates):,.2f}" for b in backends])
    console.print(table)
    console.print("* evaluation step: a failure is reported but does not stop the run\n")
    console.print("[bold]Commands[/] (run from the nanochat checkout, NANOCHAT_BASE_DIR on local scratch)")
    for phase in plan.phases:
        console.print(f"  [bold]{phase.name}[/]")
        for step in phase.steps:
            console.print(f"    {step.display(plan.nodes)}", soft_wrap=True, markup=False, highlight=False)
    console.print("[bold]Assumptions[/]")
    for line in assumptions(plan):
        console.print(f"  - {line}")
