"""Every command every recipe can generate must exist at its nanochat pin; bad plan input is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import PlanError
from runner.model import derive_shape
from runner.plan import PRESET_DEPTHS, SUPPORTED_GPU_COUNTS, Plan, build_plan
from runner.recipes import RECIPE_DIR, check_args, load_flag_table, load_recipe, recipe_names

SHARED_FLAGS = Path(__file__).resolve().parents[2] / "shared" / "nanochat"
MODELS = [*PRESET_DEPTHS, "smoke"]


def test_both_pins_have_a_recipe():
    assert {"seed", "latest"} <= set(recipe_names())
    assert load_recipe("seed")["commit"].startswith("a1ccb3d")
    assert load_recipe("latest")["commit"].startswith("92d63d4")


@pytest.mark.skipif(not SHARED_FLAGS.is_dir(), reason="the shared flag tables are not beside this checkout")
@pytest.mark.parametrize("name", ["flags-a1ccb3d.json", "flags-92d63d4.json"])
def test_vendored_flag_tables_match_the_extracted_ones(name):
    assert json.loads((RECIPE_DIR / name).read_text()) == json.loads((SHARED_FLAGS / name).read_text())


@pytest.mark.parametrize("recipe", ["seed", "latest"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("gpus", SUPPORTED_GPU_COUNTS)
@pytest.mark.parametrize("with_rl", [False, True])
def test_every_generated_flag_exists_at_the_pin(recipe, model, gpus, with_rl):
    if with_rl and not any(p.get("optional") for p in load_recipe(recipe)["phase"]):
        pytest.skip(f"{recipe} has no optional RL phase")
    plan = build_plan(recipe, model=model, gpus=gpus, with_rl=with_rl)
    table = load_flag_table(load_recipe(recipe)["flags"])
    steps = [s for p in plan.phases for s in p.steps]
    assert steps, "a plan without steps"
    for step in steps:
        for args in (step.args, step.args + step.without):
            assert check_args(step.module, args, table, plan.commit) == [], (step.name, args)
        assert step.nproc in (1, gpus)
    # The flag check is independent of build_plan's own check: re-parse against the raw JSON.
    raw = json.loads((RECIPE_DIR / load_recipe(recipe)["flags"]).read_text())
    for step in steps:
        script = step.module.replace(".", "/") + ".py"
        known = {o for names in raw.get(script, {}) for o in names.split()}
        for token in step.args + step.without:
            if token.startswith("-"):
                assert token.split("=")[0] in known, (script, token)


def test_check_args_catches_what_argparse_would():
    table = load_flag_table("flags-a1ccb3d.json")
    commit = "a1ccb3d"
    assert check_args("scripts.base_train", ["--depth=20"], table, commit) == []
    assert check_args("scripts.base_train", ["--device-batch-size=16"], table, commit)  # dashes are the latest pin's
    assert check_args("scripts.base_train", ["--depth=twenty"], table, commit)
    assert check_args("scripts.base_train", ["--fp8"], table, commit)  # latest only
    assert check_args("scripts.chat_eval", ["-a", "GSM8K"], table, commit) == ["scripts.chat_eval requires --source / -i"]
    assert check_args("scripts.mid_train", ["--dry_run"], table, commit) == []
    assert check_args("scripts.mid_train", ["--dry_run=1"], table, commit)
    assert check_args("scripts.no_such", [], table, commit)
    latest = load_flag_table("flags-92d63d4.json")
    assert check_args("scripts.mid_train", [], latest, "92d63d4") == ["module scripts.mid_train does not exist at nanochat 92d63d4"]
    assert check_args("scripts.base_train", ["--device_batch_size=16"], latest, "92d63d4")


def test_d20_numbers_match_upstream():
    recipe = load_recipe("seed")
    shape = derive_shape(20, recipe["model"], recipe["data"], gpu_memory_gib=80)
    assert shape.params_total == 560_988_160  # what nanochat prints for d20 at this pin
    assert shape.shards_needed == 216 and shape.shards_to_download == 240  # upstream downloads 240
    assert shape.device_batch_size == 16  # 32 runs out of memory on 80 GB (upstream issue 443)
    assert derive_shape(32, recipe["model"], recipe["data"], 80).device_batch_size == 8  # as run1000.sh
    assert derive_shape(20, recipe["model"], recipe["data"], 141).device_batch_size == 32  # H200 has room


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": 3}, "--gpus 3 is not supported"),
        ({"model": "d21"}, "Unknown model 'd21'"),
        ({"recipe_name": "nightly"}, "Unknown recipe 'nightly'"),
        ({"gpu_type": "T4"}, "Unknown GPU type 'T4'"),
        ({"depth": 64, "gpu_type": "A100-80GB"}, "does not fit"),
        ({"depth": 0}, "out of range"),
    ],
)
def test_bad_plan_input_is_refused_with_a_fix(kwargs, message):
    with pytest.raises(PlanError) as info:
        build_plan(**kwargs)
    assert message in info.value.message
    assert "To fix:" in info.value.message


def test_plan_json_round_trips(tmp_path):
    plan = build_plan("seed", model="d12", gpus=4, with_rl=True)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    assert again.phase_names() == ["data", "tokenizer", "base", "mid", "sft", "rl", "report"]
    assert again.phase("base").steps[0].display().startswith("torchrun --standalone --nproc_per_node=4 -m scripts.base_train -- --depth=12")


def test_smoke_is_one_gpu_and_keeps_compile_on():
    plan = build_plan("seed", model="smoke")
    assert plan.gpus == 1 and plan.smoke
    assert all(s.nproc == 1 for p in plan.phases for s in p.steps)
    every_arg = " ".join(a for p in plan.phases for s in p.steps for a in s.args)
    assert "TORCHDYNAMO_DISABLE" not in every_arg
    assert {p.name for p in plan.phases} == {"data", "tokenizer", "base", "mid", "sft", "report"}
