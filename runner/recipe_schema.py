"""The shape of a recipe file, checked when it is loaded.

A recipe is data that decides what a run spends its money on, so a misspelt key (`resum_flag`, `critical = "no"`)
must stop the load with the file and the key, not be ignored until hours into a run. Each table lists the keys it
may hold and the type (or the values) each takes; `check` returns every problem at once.
"""

from __future__ import annotations

import re

# A type, a tuple of allowed values, or a list holding the type of its items.
Kind = object

TOP: dict[str, Kind] = {
    "name": str, "commit": str, "description": str, "flags": str, "default_model": str, "has_chat_web": bool,
    "model": dict, "data": dict, "smoke": dict, "preseed": dict, "placeholders": dict, "phase": list,
}
REQUIRED_TOP = ("name", "commit", "flags", "default_model", "model", "data", "smoke", "placeholders", "phase")
MODEL: dict[str, Kind] = {
    "vocab_size": int, "aspect_ratio": int, "head_dim": int, "max_seq_len": int, "data_ratio": (int, float),
    "data_ratio_counts": ("all", "matrices+lm_head"), "total_batch_size": int, "round_dim_to_head": bool,
    "value_embeds": ("alternate_layers",), "auto_batch": bool, "activation_bytes_per_token_layer_width": (int, float),
}
DATA: dict[str, Kind] = {
    "dir": str, "shard_name": str, "chars_per_token": (int, float), "chars_per_shard": (int, float), "min_shards": int,
    "val_shard_index": int,
}
SMOKE: dict[str, Kind] = {"depth": int, "shards": int, "description": str}
PLACEHOLDERS: dict[str, Kind] = {"identity": [str], "runtime": [str]}
PRESEED: dict[str, Kind] = {
    "what": str, "url": str, "unzip": bool, "path": str, "python": str, "env_dir": str, "cache": bool,
    "offline_env": dict, "collect": str,
}
PHASE: dict[str, Kind] = {
    "name": str, "needs": [str], "makes": [str], "prestage": [str], "optional": bool, "step": list,
    "hardware": ("cpu", "gpu"), "cost": dict, "chat_source": str,
}
REQUIRED_PHASE = ("name", "needs", "makes", "step", "hardware", "cost")
COST: dict[str, Kind] = {
    "model": ("download", "tokenizer", "base_training", "training_tokens", "gpu_hours", "fixed"),
    "tokens": (int, float), "gpu_hours_at_d20": (int, float), "eval_gpu_hours_at_d20": (int, float),
    "minutes": (int, float), "smoke_minutes": (int, float), "rehearsal_minutes": (int, float),
}
STEP: dict[str, Kind] = {
    "name": str, "module": str, "args": [str], "smoke": [str], "rehearsal": [str], "gpus": ("all",), "critical": bool, "uses": [str],
    "offline": ("fail", "skip", "without"), "without": [str], "verify": ("shards",), "skip_if": ("shards",),
    "resume_flag": str, "checkpoints": str, "compiles": bool,
}
REQUIRED_STEP = ("name", "module", "args")


def _type_problem(where: str, value, kind: Kind) -> str | None:
    if isinstance(kind, list):
        if not isinstance(value, list):
            return f"{where} must be a list"
        bad = [v for v in value if not isinstance(v, kind[0])]
        return f"{where} must hold only {kind[0].__name__} values, not {bad[0]!r}" if bad else None
    if isinstance(kind, tuple) and all(isinstance(k, str) for k in kind):
        return None if value in kind else f"{where} = {value!r} is not one of {', '.join(map(repr, kind))}"
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        return f"{where} must be {getattr(kind, '__name__', kind)}, not a boolean"
    return None if isinstance(value, kind) else f"{where} = {value!r} has the wrong type"


def _table(where: str, table, allowed: dict[str, Kind], required: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(table, dict):
        return [f"{where} must be a table"]
    problems = [f"{where}.{key} is not a recipe key (known: {', '.join(allowed)})" for key in table if key not in allowed]
    problems += [f"{where}.{key} is missing" for key in required if key not in table]
    for key, value in table.items():
        if key in allowed:
            problem = _type_problem(f"{where}.{key}", value, allowed[key])
            if problem:
                problems.append(problem)
    return problems


def check(recipe: dict) -> list[str]:
    """Every problem in a parsed recipe (empty: well formed)."""
    problems = _table("recipe", recipe, TOP, REQUIRED_TOP)
    for name, allowed in (("model", MODEL), ("data", DATA), ("smoke", SMOKE), ("placeholders", PLACEHOLDERS)):
        if name in recipe:
            problems += _table(name, recipe[name], allowed)
    for name, item in recipe.get("preseed", {}).items():
        problems += _table(f"preseed.{name}", item, PRESEED, ("what", "path"))
    for i, phase in enumerate(recipe.get("phase", [])):
        where = f"phase[{i}] ({phase.get('name', '?')})" if isinstance(phase, dict) else f"phase[{i}]"
        problems += _table(where, phase, PHASE, REQUIRED_PHASE)
        if not isinstance(phase, dict):
            continue
        if isinstance(phase.get("cost"), dict):
            problems += _table(f"{where}.cost", phase["cost"], COST, ("model",))
        for j, step in enumerate(phase.get("step", [])):
            step_where = f"{where}.step[{j}] ({step.get('name', '?')})" if isinstance(step, dict) else f"{where}.step[{j}]"
            problems += _table(step_where, step, STEP, REQUIRED_STEP)
            if isinstance(step, dict):
                unknown = [u for u in step.get("uses", []) if u not in recipe.get("preseed", {})]
                problems += [f"{step_where}.uses names {u!r}, which no [preseed.{u}] defines" for u in unknown]
    return problems + _placeholder_problems(recipe)


def _placeholder_problems(recipe: dict) -> list[str]:
    """Every {placeholder} is declared once: identity (it changes what a phase makes, so it keys the phase's marker)
    or runtime (how it runs: changing it reruns nothing)."""
    declared = recipe.get("placeholders", {})
    identity, runtime = set(declared.get("identity", [])), set(declared.get("runtime", []))
    problems = [f"placeholders: {{{name}}} is both identity and runtime" for name in sorted(identity & runtime)]
    used: set[str] = set()
    for phase in recipe.get("phase", []):
        if not isinstance(phase, dict):
            continue
        texts = [*phase.get("needs", []), *phase.get("makes", []), *phase.get("prestage", [])]
        for step in phase.get("step", []):
            if isinstance(step, dict):
                texts += [*step.get("args", []), *step.get("smoke", []), *step.get("rehearsal", []), *step.get("without", []), step.get("checkpoints", "")]
        used |= {m for t in texts if isinstance(t, str) for m in re.findall(r"\{(\w+)\}", t)}
    problems += [f"placeholder {{{name}}} is used but not declared in [placeholders] identity or runtime" for name in sorted(used - identity - runtime)]
    return problems
