"""Options shared by several commands, declared once, and the plan builder they feed.

`plan_options` choose a plan (`runner plan`, `runner node run`, `runner up`); `node_options` are the node agent's
own (`runner node run`, and `runner up`, which hands them to the node through the launch description);
`storage_option` is the repeatable fsspec option every storage-reading command takes.
"""

from __future__ import annotations

import functools
import os

import click


def _stack(*decorators):
    """One decorator applying several click options, in the order they are listed in --help."""

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return functools.wraps(func)(func)

    return apply


plan_options = _stack(
    click.option("--recipe", default="seed", show_default=True, help="nanochat pin: seed (a1ccb3d) or latest (92d63d4)."),
    click.option("--model", default=None, help="d12, d20, d26, d32 or smoke (default: the recipe's, d20 for seed)."),
    click.option("--smoke", is_flag=True, help="Same as --model smoke: every phase at tiny sizes, in minutes (on a machine without NVIDIA GPUs: the CPU rehearsal)."),
    click.option("--depth", type=int, default=None, help="Any other depth instead of --model."),
    click.option("--gpus", type=int, default=None, help="GPUs per node: 1, 2, 4 or 8 (default 8; smoke: 1)."),
    click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Machines of --gpus GPUs each in one training process group (world size = nodes × gpus)."),
    click.option("--gpu-type", default="H100", show_default=True, help="H100, H200, A100-80GB or B200 (prices.toml)."),
    click.option("--with-rl", is_flag=True, help="Add the optional RL phase (GSM8K)."),
    click.option("--wandb-run", default=None, help="W&B run name (default: the run id when WANDB_API_KEY is set, else dummy)."),
    click.option("--checkpoint-every-min", type=float, default=30.0, show_default=True,
                 help="Minutes of base training between checkpoints (derived --save_every)."),
    click.option("--device", type=click.Choice(["auto", "cuda", "cpu", "mps"]), default="auto", show_default=True,
                 help="cuda: NVIDIA GPUs; cpu/mps: the rehearsal (smoke only); auto: a smoke run plans for what this machine has."),
)

node_options = _stack(
    click.option("--offline", is_flag=True, help="Download nothing: steps whose pre-seeded files are missing are skipped (or run without them), and said."),
    click.option("--force", is_flag=True, help="Run every phase again even when its marker says it is done (training starts over)."),
    click.option("--from", "from_phase", default=None, metavar="PHASE", help="Run PHASE and every phase after it again, even if done; a resumable phase resumes unless --fresh."),
    click.option("--only", "only_phase", default=None, metavar="PHASE", help="Run only PHASE again (its inputs must be in storage); a resumable phase resumes unless --fresh."),
    click.option("--fresh", is_flag=True, help="With --from/--only: start a resumable phase over instead of resuming its newest checkpoint."),
    click.option("--heartbeat-sec", type=click.FloatRange(min=1.0), default=None, help="Print a heartbeat after this many seconds of silence (default 60)."),
)

lease_options = _stack(
    click.option("--steal", is_flag=True, help="Take over this model's lease in storage from an agent whose heartbeat stopped (after its lease expired)."),
    click.option("--steal-now", is_flag=True, help="Take over the lease even while it is fresh: only when you know the agent holding it is gone."),
    click.option("--lease-wait", "lease_wait_sec", type=click.FloatRange(min=0.0), default=0.0, metavar="SEC",
                 help="Wait up to SEC for a lease held under this same run id to expire (a backend retrying after a preemption)."),
)

storage_option = click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                              help="fsspec option, e.g. endpoint_url=http://127.0.0.1:8333 (repeatable).")


def make_plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, checkpoint_every_min=30.0, run_id=None, smoke=False,
              device="auto", on_this_machine=True, nodes=1):
    """Build a plan. `--smoke` is `--model smoke`. `device` auto: a smoke run on this machine plans for what it has
    (NVIDIA GPUs, else the CPU/MPS rehearsal); anything else, or a run elsewhere, plans for NVIDIA GPUs. The W&B run
    is named after the run id (the one given, or the plan's new one) when a W&B key is present, else disabled
    ("dummy"); the name is a runtime value, so it never changes a phase's identity."""
    from ..errors import PlanError
    from ..plan import build_plan

    if smoke:
        if model not in (None, "smoke") or depth is not None:
            raise PlanError("--smoke is the smoke model; it cannot be combined with --model or --depth.", ["Drop --smoke or the other option."])
        model = "smoke"
    if device == "auto":
        from ..devices import local_device

        device = local_device() if model == "smoke" and on_this_machine and nodes == 1 else "cuda"
    if wandb_run is None and not os.environ.get("WANDB_API_KEY"):
        wandb_run = "dummy"  # nanochat's name for "no W&B"
    return build_plan(recipe, model, depth, gpus, gpu_type, with_rl, wandb_run, run_id=run_id,
                      checkpoint_every_min=checkpoint_every_min, device=device, nodes=nodes)


def pairs(values: tuple[str, ...], what: str, from_env: bool = False) -> dict[str, str]:
    """{KEY: VALUE} from repeated KEY=VALUE options; with `from_env`, a bare KEY takes this shell's value."""
    from ..errors import RunnerError

    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not key or (not sep and not from_env):
            raise RunnerError(f"{what} {value!r} is not KEY=VALUE.", [f"Write it as {what} KEY=VALUE."])
        if not sep:
            if key not in os.environ:
                raise RunnerError(f"{what} {key}: {key} is not set in this shell.", [f"Export {key} first, or write {what} {key}=VALUE."])
            rest = os.environ[key]
        out[key] = rest
    return out
