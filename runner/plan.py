"""Building plans: a recipe × a model size × a GPU count, resolved into exact commands (plan_data.py holds the
plan's types). `build_plan` refuses what cannot
work (an unknown model, an unsupported GPU count, a flag the pin lacks) before anything is spent.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

from . import model as model_math
from .errors import PlanError
from .plan_data import PLAN_VERSION, Phase, Plan, Step  # noqa: F401 - the plan's types, re-exported for its users
from .recipes import DEFAULT_RECIPE, load_recipe
from .world import Batch, check_nodes, derive_batch

SUPPORTED_GPU_COUNTS = (1, 2, 4, 8)
PRESET_DEPTHS = {"d12": 12, "d20": 20, "d24": 24, "d26": 26, "d32": 32}
SMOKE = "smoke"
SMOKE_TOKENS_PER_GPU = 1024  # smoke base/mid training: device batch 1 × sequence 1024 per process
FP8_GPUS = {"H100", "H200", "B200"}  # nanochat's --fp8 needs Hopper or newer


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


def check_device(device: str, smoke: bool, gpus: int) -> None:
    """Without NVIDIA GPUs only the rehearsal makes sense: the smoke sizes, one process."""
    from .devices import DEVICES

    if device not in DEVICES:
        raise PlanError(f"Unknown device {device!r}.", [f"Use one of: {', '.join(DEVICES)} (or auto)."])
    if device != "cuda" and not smoke:
        raise PlanError(f"A real model on the {device.upper()} would take months; only the rehearsal runs there.",
                        ["Rehearse every phase at tiny sizes: --smoke.", "Train the real model on NVIDIA GPUs: --backend local|ssh|modal."])
    if device != "cuda" and gpus != 1:
        raise PlanError(f"The {device.upper()} rehearsal runs as one process, not {gpus}.", ["Drop --gpus."])


def new_run_id(model: str, recipe: str, gpus: int, device: str = "cuda", nodes: int = 1) -> str:
    where = (f"{nodes}x{gpus}gpu" if nodes > 1 else f"{gpus}gpu") if device == "cuda" else device
    return f"{recipe}-{model}-{where}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def plan_batch(recipe: dict, shape, smoke: bool, world_size: int, where: str) -> Batch:
    """The device batch and gradient accumulation at this world size. The smoke sizes scale their total batch with
    the world size (device batch 1), so only the real sizes can be refused."""
    if smoke:
        return Batch(1, 1, world_size)
    return derive_batch(shape.total_batch_tokens, recipe["model"]["max_seq_len"], world_size, shape.device_batch_size, where)


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
    device: str = "cuda",
    nodes: int = 1,
) -> Plan:
    from .estimate import gpu_facts

    if checkpoint_every_min <= 0:
        raise PlanError(f"--checkpoint-every-min {checkpoint_every_min} must be positive.", ["Use e.g. 30 (minutes of training between checkpoints)."])

    recipe = load_recipe(recipe_name)
    model_name, depth_value, smoke = parse_model(model, depth, recipe)
    gpus = gpus if gpus is not None else (1 if smoke else 8)
    check_gpus(gpus)
    check_nodes(nodes)
    if device != "cuda" and nodes > 1:
        raise PlanError(f"The {device.upper()} rehearsal runs on this machine alone, not on {nodes} nodes.", ["Drop --nodes, or plan for NVIDIA GPUs: --device cuda."])
    check_device(device, smoke, gpus)
    world_size = gpus * nodes
    gpu = gpu_facts(gpu_type)
    shape = model_math.derive_shape(depth_value, recipe["model"], recipe["data"], gpu["memory_gib"])
    if shape.device_batch_size == 0:
        raise PlanError(
            f"{model_name} does not fit in {gpu['memory_gib']} GB of GPU memory even at device batch size 1 "
            f"(about {shape.est_memory_gib} GiB needed).",
            ["Choose a smaller model (--model d20) or a GPU with more memory (--gpu-type H200)."],
        )
    shards = recipe["smoke"]["shards"] if smoke else shape.shards_to_download
    batch = plan_batch(recipe, shape, smoke, world_size, f"{model_name} on {nodes} node(s) × {gpus} GPU(s)")
    if batch.device_batch != shape.device_batch_size and not smoke:
        shape = replace(shape, device_batch_size=batch.device_batch,
                        est_memory_gib=round(model_math.training_memory_gib(depth_value, batch.device_batch, recipe["model"]), 1))
    run_id = run_id or new_run_id(model_name, recipe_name, gpus, device, nodes)
    wandb_run = wandb_run or run_id
    values = {
        "depth": depth_value,
        "model_tag": f"d{depth_value}",
        "data_ratio": recipe["model"]["data_ratio"],
        "device_batch_size": shape.device_batch_size,
        "shards": shards,
        "wandb_run": wandb_run,
        # Sizes per process scale with the world size (all GPUs of all nodes); {gpus} is the world size too, so
        # 1 node × 8 and 2 nodes × 4 make the same phases (and resume each other's checkpoints).
        "smoke_batch_tokens": SMOKE_TOKENS_PER_GPU * world_size,
        "smoke_eval_tokens": 2 * SMOKE_TOKENS_PER_GPU * world_size,
        "smoke_sft_batch_tokens": 2 * SMOKE_TOKENS_PER_GPU * world_size,
        "gpus": world_size,
        "fp8": "--fp8" if gpu_type in FP8_GPUS else "",
        "save_every": save_every_steps(shape, world_size, gpu_type, checkpoint_every_min),
    }
    runtime = set(recipe["placeholders"].get("runtime", []))
    identity_values = {k: (f"{{{k}}}" if k in runtime else v) for k, v in values.items()}
    phases: list[Phase] = []
    for raw_phase in recipe["phase"]:
        if raw_phase.get("optional") and not with_rl:
            continue
        steps = []
        for raw in raw_phase["step"]:
            args = raw["args"]
            if smoke:  # the rehearsal (no NVIDIA GPU) takes its own sizes where a step states them
                args = raw.get("rehearsal", raw.get("smoke", args)) if device != "cuda" else raw.get("smoke", args)
            step = Step(
                name=raw["name"],
                module=raw["module"],
                args=_fill_all(args, values),
                identity=_fill_all(args, identity_values),
                nproc=gpus if raw.get("gpus") == "all" else 1,
                all_gpus=raw.get("gpus") == "all",
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
        device=device,
        nodes=nodes,
    )
    the_plan.shape.update(grad_accum_steps=batch.grad_accum, world_size=world_size)
    the_plan.check(fix="Fix the recipe file so every flag exists in its flag table (runner/recipes/flags-*.json).")
    return the_plan
