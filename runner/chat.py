"""Talking to a trained model: nanochat's chat CLI or web UI against a run's final checkpoint from storage.

The checkpoint (the newest complete one of the most-trained source: RL, else SFT, else mid-training) and the
tokenizer are staged from storage into scratch, then nanochat's own `scripts.chat_cli` or `scripts.chat_web`
runs from the checkout, exactly as a phase would. The web UI binds 127.0.0.1 on the node; the backend forwards
the port to the user's machine.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PlanError, RunnerError
from .nanochat_env import locate, phase_env
from .process import run_interactive
from .provision import nanochat_dir as provisioned_dir
from .recipes import check_args, load_recipe
from .resume import stage_newest_complete
from .runlogs import load_run
from .storage import open_storage
from .checkpoints import stored_checkpoints
from .transfer import SyncState, pull

def sources(plan) -> list[tuple[str, str]]:
    """[(source name, checkpoint folder)] of the plan's chat models, most trained first (the recipe's `chat_source`)."""
    return [(phase.chat_source, phase.makes[0]) for phase in reversed(plan.phases) if phase.chat_source and phase.makes]


def pick_source(storage, plan, wanted: str | None) -> tuple[str, str]:
    """(source name, checkpoint folder): the one asked for, else the most-trained with a complete checkpoint."""
    tag = f"d{plan.depth}"
    available = [(name, rel) for name, rel in sources(plan) if stored_checkpoints(storage, rel).complete]
    if wanted:
        for name, rel in available:
            if name == wanted:
                return name, rel
        raise RunnerError(f"Run has no complete {wanted} checkpoint for {tag} in {storage.url}.",
                          [f"Use one of: {', '.join(n for n, _ in available) or 'none yet — finish SFT first'} (--source)."])
    if not available:
        raise RunnerError(f"No chat model for {tag} in {storage.url} yet (no complete SFT, RL or mid checkpoint).",
                          ["Let the run reach the sft phase (`runner status`), then try again."])
    return available[0]


def chat(run_id: str, storage_url: str, storage_options, nanochat_dir, python, scratch: Path, prompt: str | None,
         web: bool, port: int, source: str | None, log=print) -> int:
    storage = open_storage(storage_url, storage_options, check=False)
    _, plan_raw = load_run(storage, run_id)
    from .plan import Plan

    plan = Plan.from_dict(plan_raw)
    recipe = load_recipe(plan.recipe)
    if web and not recipe.get("has_chat_web"):
        raise PlanError(f"Recipe {plan.recipe!r} (nanochat {plan.commit[:7]}) has no chat web UI: upstream removed it.",
                        ["Chat in the terminal instead: drop --web (add -p PROMPT for one answer)."])
    nanochat = locate(provisioned_dir(nanochat_dir, plan, log=log), python, plan.commit, plan.recipe)
    name, rel = pick_source(storage, plan, source)
    base, cache = scratch / "base", scratch / "cache"
    state = SyncState(scratch)
    pull(storage, "tokenizer", base / "tokenizer", state, log=log)
    step = stage_newest_complete(storage, rel, base / rel, state, log=log)
    log(f"chatting with the {name} model of run {run_id} (checkpoint step {step}, {plan.model})")
    if web:
        module, args = "scripts.chat_web", ["-i", name, "-g", f"d{plan.depth}", "--host", "127.0.0.1", "-p", str(port)]
    else:
        module, args = "scripts.chat_cli", ["-i", name, "-g", f"d{plan.depth}", *(["-p", prompt] if prompt else [])]
    problems = check_args(module, args, recipe["flag_table"], plan.commit)
    if problems:
        raise PlanError("This nanochat pin refuses the chat command: " + "; ".join(problems), ["Use a recipe whose pin has it."])
    if web:
        log(f"web UI: http://127.0.0.1:{port} (Ctrl-C stops it)")
    # Interactive: the terminal is the chat's own (stdin, stdout), so no streaming layer in between.
    return run_interactive([nanochat.python, "-m", module, *args], str(nanochat.root), phase_env(base, cache))
