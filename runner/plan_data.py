"""A plan as data: Step, Phase and Plan, the JSON the node agent executes unchanged on any backend.

A plan carries everything the node needs (commands, storage paths, pre-seed sources, each phase's facts) and
nothing about the laptop. It can be loaded from a file or from RUNNER_PLAN_JSON, upgraded from an older version,
and checked against the pin's flag table wherever it came from (`Plan.check`). plan.py builds plans.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import PlanError
from .recipes import check_args, load_recipe

PLAN_VERSION = 2  # 2: steps carry their identity arguments; phases carry hardware, cost and chat source


@dataclass
class Step:
    name: str
    module: str
    args: list[str]
    # The arguments with the recipe's runtime placeholders left unfilled ("--run={wandb_run}"): what the phase's
    # marker key hashes, so a W&B name, a checkpoint interval or a device batch never makes a finished phase run again.
    identity: list[str] = field(default_factory=list)
    nproc: int = 1  # >1: launched with torchrun (processes per node)
    all_gpus: bool = False  # runs on every GPU of every node (torchrun); False: one process, on the leader node only
    critical: bool = True  # False: a failure is recorded and the run goes on (evaluations)
    uses: list[str] = field(default_factory=list)  # pre-seeded items
    offline: str = "fail"  # fail | skip | without: what --offline does when a `uses` item is missing
    without: list[str] = field(default_factory=list)
    verify: str = ""  # "shards": count and check the data shards afterwards
    skip_if: str = ""  # "shards": skip the command when storage already holds every shard
    resume_flag: str = ""  # e.g. --resume_from_step: appended as FLAG=STEP to resume from storage
    checkpoints: str = ""  # the storage folder of the checkpoints this step writes
    compiles: bool = False  # runs torch.compile: compile caches are restored before and saved after

    def display(self, nodes: int = 1) -> str:
        args = " ".join(self.args)
        if self.all_gpus and nodes > 1:
            return (f"torchrun --nnodes={nodes} --node_rank=R --nproc_per_node={self.nproc} --master_addr=MASTER "
                    f"--master_port=PORT -m {self.module} -- {args}").rstrip()
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
    device: str = "cuda"  # cuda: NVIDIA GPUs; cpu or mps: the rehearsal on a machine without them
    nodes: int = 1  # machines of `gpus` GPUs each, in one process group of nodes × gpus ranks
    version: int = PLAN_VERSION

    @property
    def world_size(self) -> int:
        """Training processes across all nodes: what nanochat divides its batch by and shards optimizer state over."""
        return self.nodes * self.gpus

    @property
    def on_gpus(self) -> bool:
        return self.device == "cuda"

    def where(self) -> str:
        """Where it runs, in words: "8× H100", or this machine's CPU."""
        if self.on_gpus and self.nodes > 1:
            return f"{self.nodes} nodes × {self.gpus}× {self.gpu_type} ({self.world_size} GPUs)"
        return f"{self.gpus}× {self.gpu_type}" if self.on_gpus else f"this machine's {self.device.upper()} (the rehearsal)"

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
        steps = lambda p: [Step(**{"all_gpus": s.get("nproc", 1) > 1, **s}) for s in p["steps"]]  # noqa: E731 - older plans: torchrun steps had nproc > 1
        phases = [Phase(**{**p, "steps": steps(p)}) for p in raw["phases"]]
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
