"""Recipes: one TOML file per nanochat pin (runner/recipes/<name>.toml), and the flag check against that pin.

A recipe is data: phases, steps, arguments with placeholders, pre-seeded files, and the facts about each phase
that code would otherwise look up by its name (CPU or GPU, how its cost is estimated, which model it makes for
chat). It is checked against recipe_schema.py when loaded. Recipes are found by name only. `check_args` is the guard
against the most expensive mistake a runner can make, a flag that the pinned nanochat does not accept, which
argparse only reports when the step starts, possibly hours into a run.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

from . import recipe_schema
from .errors import PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

RECIPE_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "seed"
# Modules that read sys.argv themselves instead of using argparse, so they have no entry in the flag tables.
MODULES_WITHOUT_ARGPARSE = {"nanochat.report"}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


@lru_cache(maxsize=None)
def load_recipe(name: str) -> dict:
    path = RECIPE_DIR / f"{name}.toml"
    if name not in recipe_names():  # a name, never a path: recipes are the runner's own files
        raise PlanError(
            f"Unknown recipe {name!r}.",
            [f"Use one of: {', '.join(recipe_names())} (`runner plan --recipe NAME`)."],
        )
    try:
        with path.open("rb") as f:
            recipe = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"Recipe file {path} is not valid TOML ({e}).", [f"Fix {path}."]) from None
    problems = recipe_schema.check(recipe)
    if problems:
        raise PlanError(f"Recipe file {path} is not a valid recipe:\n  " + "\n  ".join(problems), [f"Fix those keys in {path}."])
    recipe["flag_table"] = load_flag_table(recipe["flags"])
    return recipe


@lru_cache(maxsize=None)
def load_flag_table(filename: str) -> dict[str, dict[str, dict]]:
    """{module: {option string: spec}}, e.g. {"scripts.base_train": {"--depth": {"type": "int", ...}}}."""
    raw = json.loads((RECIPE_DIR / filename).read_text())
    table: dict[str, dict[str, dict]] = {}
    for script, flags in raw.items():
        module = script.removesuffix(".py").replace("/", ".")
        options: dict[str, dict] = {}
        for names, spec in flags.items():
            for option in names.split():
                options[option] = spec
        table[module] = options
    return table


def _check_value(module: str, option: str, spec: dict, value: str) -> str | None:
    kind = spec.get("type")
    try:
        if kind == "int":
            int(value)
        elif kind == "float":
            float(value)
    except ValueError:
        return f"{module} {option} takes an {kind}, got {value!r}"
    return None


def check_args(module: str, args: list[str], flag_table: dict[str, dict[str, dict]], commit: str) -> list[str]:
    """Every problem argparse at this pin would raise for `python -m module args` (empty list: all good)."""
    if module in MODULES_WITHOUT_ARGPARSE:
        dashed = [a for a in args if a.startswith("-")]
        return [f"{module} takes no options, got {dashed}"] if dashed else []
    if module not in flag_table:
        return [f"module {module} does not exist at nanochat {commit[:7]}"]
    options = flag_table[module]
    problems: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-"):
            problems.append(f"{module}: unexpected positional argument {token!r}")
            continue
        option, has_inline, value = token.partition("=")
        spec = options.get(option)
        if spec is None:
            problems.append(f"{module} has no option {option} at nanochat {commit[:7]}")
            continue
        if spec.get("action") in ("'store_true'", "'store_false'"):
            if has_inline:
                problems.append(f"{module} {option} is a switch and takes no value")
            continue
        if not has_inline:
            if i >= len(args):
                problems.append(f"{module} {option} needs a value")
                continue
            value = args[i]
            i += 1
        problem = _check_value(module, option, spec, value)
        if problem:
            problems.append(problem)
    given = {a.partition("=")[0] for a in args}
    seen: set[int] = set()
    for option, spec in options.items():
        if spec.get("required") != "True" or id(spec) in seen:
            continue
        seen.add(id(spec))
        # A required option is satisfied by any of its spellings (-i or --source).
        spellings = sorted(o for o, s in options.items() if s is spec)
        if not set(spellings) & given:
            problems.append(f"{module} requires {' / '.join(spellings)}")
    return sorted(set(problems))
