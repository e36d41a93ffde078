"""Plans: a recipe × a model size × a GPU count, resolved into exact commands.

A plan is plain JSON that the node agent executes unchanged on any backend, so it carries everything the node
needs (commands, storage paths, pre-seed sources) and nothing about the laptop. `build_plan` refuses what cannot
work (an unknown model, an unsupported GPU count, a flag the pin lacks) before anything is spent.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import model as model_math
from .errors import PlanError
from .recipes import DEFAULT_RECIPE, check_args, load_recipe

PLAN_VERSION = 2  # 2: steps carry their identity arguments; phases carry hardware, cost and chat source
SUPPORTED_GPU_COUNTS = (1, 2, 4, 8)
PRESET_DEPTHS = {"d12": 12, "d20": 20, "d24": 24, "d26": 26, "d32": 32}
SMOKE = "smoke"
SMOKE_TOKENS_PER_GPU = 1024  # smoke base/mid training: device batch 1 × sequence 1024 per process
FP8_GPUS = {"H100", "H200", "B200"}  # nanochat's --fp8 needs Hopper or newer


@dataclass
class Step:
    name: str
    module: str
    args: list[str]
    # The arguments with the recipe's runtime placeholders left unfilled ("--run={wandb_run}"): what the phase's
    # marker key hashes, so a W&B name, a checkpoint interval or a device batch never makes a finished phase run again.
    identity: list[str] = field(default_factory=list)
    nproc: int = 1  # >1: launched with torchrun
    critical: bool = True  # False: a failure is recorded and the run goes on (evaluations)
    uses: list[str] = field(default_factory=list)  # pre-seeded items
    offline: str = "fail"  # fail | skip | without: what --offline does when a `uses` item is missing
    without: list[str] = field(default_factory=list)
    verify: str = ""  # "shards": count and check the data shards afterwards
    skip_if: str = ""  # "shards": skip the command when storage already holds every shard
    resume_flag: str = ""  # e.g. --resume_from_step: appended as FLAG=STEP to resume from storage
    checkpoints: str = ""  # the storage folder of the checkpoints this step writes
    compiles: bool = False  # runs torch.compile: compile caches are restored before and saved after

    def display(self) -> str:
        args = " ".join(self.args)
        if self.nproc > 1:
            return f"torchrun --standalone --nproc_per_node={self.nproc} -m {self.module} -- {args}".rstrip()
        return f"python -m {self.module} {args}".rstrip()


@dataclass
class Phase:
    name: str
    needs: list[str]
    makes: list[str]
    steps: list[Step]
    prestage: list[str] = field(default_factory=list)
    hardware: str = "gpu"  # cpu: needs no GPU (a backend may run it on a cheaper machine)
    cost: dict = field(default_factory=dict)  # how estimate.py prices it (the recipe's `cost` table)
    chat_source: str = ""  # the name `runner chat --source` knows its checkpoints by ("" : not a chat model)


@dataclass
class Plan:
    recipe: str
    commit: str
    model: str
    depth: int
    gpus: int
    gpu_type: str
    smoke: bool
    with_rl: bool
    wandb_run: str
    shape: dict
    data: dict
    preseed: dict
    phases: list[Phase]
    run_id: str = ""
    backend: str = ""  # where it runs (set by `runner up`); prices the live cost
    version: int = PLAN_VERSION

    @property
    def model_tag(self) -> str:
        return f"d{self.depth}"

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise PlanError(f"This plan has no phase {name!r}.", [f"Use one of: {', '.join(self.phase_names())}."])

    def phase_names(self) -> list[str]:
        return [p.name for p in self.phases]

    def check(self, fix: str = "Make the plan again with this runner: `runner plan --json > plan.json` (and do not edit its commands).") -> None:
        """Every command (as given, offline, and resuming) against the pin's flag table: a flag nanochat refuses
        is an error now, not hours into the run. Runs wherever a plan comes from (built here, a file, a backend)."""
        recipe = load_recipe(self.recipe)
        if self.commit != recipe["commit"]:
            raise PlanError(f"This plan names nanochat {self.commit[:7]}, but recipe {self.recipe!r} is pinned to {recipe['commit'][:7]}.", [fix])
        problems: list[str] = []
        for phase in self.phases:
            for step in phase.steps:
                resume_variant = [f"{step.resume_flag}=1"] if step.resume_flag else []
                for args in (step.args, step.args + step.without, step.args + resume_variant):
                    problems += check_args(step.module, args, recipe["flag_table"], recipe["commit"])
        if problems:
            raise PlanError("The plan has commands that nanochat at this pin would refuse:\n  " + "\n  ".join(sorted(set(problems))), [fix])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "Plan":
        if raw.get("version") == 1:
            raw = _upgrade_v1(raw)
        if raw.get("version") != PLAN_VERSION:
            raise PlanError(
                f"This plan has version {raw.get('version')}, this runner reads version {PLAN_VERSION}.",
                ["Make the plan again with this runner: `runner plan --json > plan.json`."],
            )
        phases = [Phase(**{**p, "steps": [Step(**s) for s in p["steps"]]}) for p in raw["phases"]]
        return cls(**{**raw, "phases": phases})

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise PlanError(f"No plan file at {path}.", ["Write one with `runner plan --json > plan.json`."])
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str) -> "Plan":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{source} is not valid JSON ({e}).", ["Write it again with `runner plan --json`."])
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"{source} is not a runner plan ({e}).", ["Write it with `runner plan --json`."])


def _upgrade_v1(raw: dict) -> dict:
    """A version-1 plan (written before steps carried their identity): its steps keep the keys they had (identity =
    arguments) and its phases take their hardware, cost and chat source from the recipe."""
    recipe_phases = {p["name"]: p for p in load_recipe(raw["recipe"])["phase"]}
    phases = []
    for phase in raw["phases"]:
        facts = recipe_phases.get(phase["name"], {})
        steps = [{"identity": list(s["args"]), **s} for s in phase["steps"]]
        phases.append({"hardware": facts.get("hardware", "gpu"), "cost": dict(facts.get("cost", {})),
                       "chat_source": facts.get("chat_source", ""), **phase, "steps": steps})
    return {**raw, "phases": phases, "version": PLAN_VERSION}


def parse_model(model: str | None, depth: int | None, recipe: dict) -> tuple[str, int, bool]:
    """(model name, depth, smoke?) from `--model d20|smoke` or `--depth N`."""
    if depth is not None and model is not None:
        raise PlanError("Give either --model or --depth, not both.", ["Drop one of them."])
    if depth is not None:
        if not 1 <= depth <= 64:
            raise PlanError(f"--depth {depth} is out of range.", ["Use a depth between 1 and 64 (d20 is the $100 run)."])
        return f"d{depth}", depth, False
    model = model or recipe["default_model"]
    if model == SMOKE:
        return SMOKE, recipe["smoke"]["depth"], True
    if model in PRESET_DEPTHS:
        return model, PRESET_DEPTHS[model], False
    raise PlanError(
        f"Unknown model {model!r}.",
        [f"Use one of: {', '.join([*PRESET_DEPTHS, SMOKE])}, or --depth N for any other depth."],
    )


def check_gpus(gpus: int) -> None:
    if gpus not in SUPPORTED_GPU_COUNTS:
        raise PlanError(
            f"--gpus {gpus} is not supported.",
            [
                "Use 1, 2, 4 or 8: nanochat's total batch (524,288 tokens) must divide by device batch × "
                "sequence length × GPU count, which holds only for powers of two up to 8.",
            ],
        )


def new_run_id(model: str, recipe: str, gpus: int) -> str:
    return f"{recipe}-{model}-{gpus}gpu-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _fill(template: str, values: dict) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise PlanError(f"Recipe placeholder {{{key}}} is unknown.", ["Fix the recipe file."])
        return str(values[key])

    return re.sub(r"\{(\w+)\}", sub, template)


def _fill_all(templates: list[str], values: dict) -> list[str]:
    """Fill every argument; one that renders empty (an optional switch such as {fp8}) is dropped."""
    return [filled for filled in (_fill(t, values) for t in templates) if filled]


def save_every_steps(shape, gpus: int, gpu_type: str, checkpoint_every_min: float) -> int:
    """Steps between checkpoints so that at least one lands every `checkpoint_every_min` of training."""
    from .estimate import base_training_hours

    minutes_per_step = base_training_hours(shape.to_dict(), gpus, gpu_type) * 60 / max(shape.iterations, 1)
    return max(1, int(checkpoint_every_min / max(minutes_per_step, 1e-9)))


def build_plan(
    recipe_name: str = DEFAULT_RECIPE,
    model: str | None = None,
    depth: int | None = None,
    gpus: int | None = None,
    gpu_type: str = "H100",
    with_rl: bool = False,
    wandb_run: str | None = "dummy",  # None: named after the run id
    run_id: str | None = None,
    checkpoint_every_min: float = 30.0,
) -> Plan:
    from .estimate import gpu_facts

    if checkpoint_every_min <= 0:
        raise PlanError(f"--checkpoint-every-min {checkpoint_every_min} must be positive.", ["Use e.g. 30 (minutes of training between checkpoints)."])

    recipe = load_recipe(recipe_name)
    model_name, depth_value, smoke = parse_model(model, depth, recipe)
    gpus = gpus if gpus is not None else (1 if smoke else 8)
    check_gpus(gpus)
    gpu = gpu_facts(gpu_type)
    shape = model_math.derive_shape(depth_value, recipe["model"], recipe["data"], gpu["memory_gib"])
    if shape.device_batch_size == 0:
        raise PlanError(
            f"{model_name} does not fit in {gpu['memory_gib']} GB of GPU memory even at device batch size 1 "
            f"(about {shape.est_memory_gib} GiB needed).",
            ["Choose a smaller model (--model d20) or a GPU with more memory (--gpu-type H200)."],
        )
    shards = recipe["smoke"]["shards"] if smoke else shape.shards_to_download
    run_id = run_id or new_run_id(model_name, recipe_name, gpus)
    wandb_run = wandb_run or run_id
    values = {
        "depth": depth_value,
        "model_tag": f"d{depth_value}",
        "data_ratio": recipe["model"]["data_ratio"],
        "device_batch_size": shape.device_batch_size,
        "shards": shards,
        "wandb_run": wandb_run,
        "smoke_batch_tokens": SMOKE_TOKENS_PER_GPU * gpus,
        "smoke_eval_tokens": 2 * SMOKE_TOKENS_PER_GPU * gpus,
        "smoke_sft_batch_tokens": 2 * SMOKE_TOKENS_PER_GPU * gpus,
        "gpus": gpus,
        "fp8": "--fp8" if gpu_type in FP8_GPUS else "",
        "save_every": save_every_steps(shape, gpus, gpu_type, checkpoint_every_min),
    }
    runtime = set(recipe["placeholders"].get("runtime", []))
    identity_values = {k: (f"{{{k}}}" if k in runtime else v) for k, v in values.items()}
    phases: list[Phase] = []
    for raw_phase in recipe["phase"]:
        if raw_phase.get("optional") and not with_rl:
            continue
        steps = []
        for raw in raw_phase["step"]:
            args = raw["smoke"] if smoke and "smoke" in raw else raw["args"]
            step = Step(
                name=raw["name"],
                module=raw["module"],
                args=_fill_all(args, values),
                identity=_fill_all(args, identity_values),
                nproc=gpus if raw.get("gpus") == "all" else 1,
                critical=raw.get("critical", True),
                uses=list(raw.get("uses", [])),
                offline=raw.get("offline", "fail"),
                without=_fill_all(raw.get("without", []), values),
                verify=raw.get("verify", ""),
                skip_if=raw.get("skip_if", ""),
                resume_flag=raw.get("resume_flag", ""),
                checkpoints=_fill(raw.get("checkpoints", ""), values),
                compiles=raw.get("compiles", False),
            )
            steps.append(step)
        phases.append(
            Phase(
                name=raw_phase["name"],
                needs=[_fill(p, values) for p in raw_phase["needs"]],
                makes=[_fill(p, values) for p in raw_phase["makes"]],
                prestage=[_fill(p, values) for p in raw_phase.get("prestage", [])],
                steps=steps,
                hardware=raw_phase["hardware"],
                cost=dict(raw_phase["cost"]),
                chat_source=raw_phase.get("chat_source", ""),
            )
        )
    data = dict(recipe["data"], shards=shards)
    the_plan = Plan(
        recipe=recipe_name,
        commit=recipe["commit"],
        model=model_name,
        depth=depth_value,
        gpus=gpus,
        gpu_type=gpu_type,
        smoke=smoke,
        with_rl=with_rl,
        wandb_run=wandb_run,
        shape=shape.to_dict(),
        data=data,
        preseed={name: dict(item) for name, item in recipe.get("preseed", {}).items()},
        phases=phases,
        run_id=run_id,
    )
    the_plan.check(fix="Fix the recipe file so every flag exists in its flag table (runner/recipes/flags-*.json).")
    return the_plan
