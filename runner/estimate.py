"""Time and cost estimates for a plan: FLOPs ≈ 6 · params · tokens at a stated MFU, priced per backend.

The prices and GPU facts live in `prices.toml` beside this file, so a user can correct them without touching
code; `assumptions()` returns every number used, and `runner plan` prints them under the table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import PlanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRICES_FILE = Path(__file__).with_name("prices.toml")
D20_PARAMS = 477_102_080  # d20's matmul parameters: the size the fixed-cost assumptions below were stated for
# Work that is not base pretraining, stated for d20 on 8 GPUs and scaled by parameters / D20_PARAMS.
MID_TRAINING_TOKENS = 0.4e9  # SmolTalk + MMLU aux + GSM8K + identity, roughly one epoch
SFT_GPU_HOURS_AT_D20 = 8 * 0.15
RL_GPU_HOURS_AT_D20 = 8 * 0.5
EVAL_GPU_HOURS_AT_D20 = {"base": 8 * 0.12, "mid": 8 * 0.08, "sft": 8 * 0.08, "rl": 8 * 0.05}
TOKENIZER_CHARS_PER_SECOND = 25e6
SMOKE_MINUTES = {"data": 1.0, "tokenizer": 1.5, "base": 4.0, "mid": 3.0, "sft": 3.0, "rl": 3.0, "report": 0.2}


@lru_cache(maxsize=1)
def prices() -> dict:
    with PRICES_FILE.open("rb") as f:
        return tomllib.load(f)


def gpu_facts(gpu_type: str) -> dict:
    gpus = prices()["gpus"]
    if gpu_type not in gpus:
        raise PlanError(f"Unknown GPU type {gpu_type!r}.", [f"Use one of: {', '.join(gpus)} (edit {PRICES_FILE} to add one)."])
    return gpus[gpu_type]


@dataclass
class PhaseEstimate:
    phase: str
    hours: float
    gpus_billed: int

    def dollars(self, backend: str, gpu_type: str) -> float:
        rate = prices()["dollars_per_gpu_hour"][backend].get(gpu_type, 0.0)
        return self.hours * self.gpus_billed * rate


def base_training_hours(shape: dict, gpus: int, gpu_type: str) -> float:
    """Hours of base pretraining alone: 6 · matmul params · tokens at the stated MFU."""
    flops_per_second = gpus * gpu_facts(gpu_type)["peak_bf16_tflops"] * 1e12 * prices()["assumptions"]["mfu"]
    return 6 * shape["params_matmul"] * shape["training_tokens"] / flops_per_second / 3600


def _gpu_hours_to_hours(gpu_hours_at_d20: float, params: int, gpus: int) -> float:
    return gpu_hours_at_d20 * (params / D20_PARAMS) / gpus


def estimate_phases(plan) -> list[PhaseEstimate]:
    a = prices()["assumptions"]
    gpu = gpu_facts(plan.gpu_type)
    params = plan.shape["params_matmul"]
    flops_per_second = plan.gpus * gpu["peak_bf16_tflops"] * 1e12 * a["mfu"]
    out = []
    for phase in plan.phases:
        if plan.smoke:
            hours = SMOKE_MINUTES.get(phase.name, 1.0) / 60
        elif phase.name == "data":
            hours = plan.data["shards"] * a["shard_mb"] / a["download_mb_per_s"] / 3600
        elif phase.name == "tokenizer":
            hours = 2e9 / TOKENIZER_CHARS_PER_SECOND / 3600
        elif phase.name == "base":
            train = base_training_hours(plan.shape, plan.gpus, plan.gpu_type)
            hours = train + _gpu_hours_to_hours(EVAL_GPU_HOURS_AT_D20["base"], params, plan.gpus)
        elif phase.name == "mid":
            train = 6 * params * MID_TRAINING_TOKENS / flops_per_second / 3600
            hours = train + _gpu_hours_to_hours(EVAL_GPU_HOURS_AT_D20["mid"], params, plan.gpus)
        elif phase.name == "sft":
            hours = _gpu_hours_to_hours(SFT_GPU_HOURS_AT_D20 + EVAL_GPU_HOURS_AT_D20["sft"], params, plan.gpus)
        elif phase.name == "rl":
            hours = _gpu_hours_to_hours(RL_GPU_HOURS_AT_D20 + EVAL_GPU_HOURS_AT_D20["rl"], params, plan.gpus)
        else:
            hours = 1 / 60
        # The whole node is billed while any phase runs, including the CPU-bound data and tokenizer phases.
        out.append(PhaseEstimate(phase.name, hours, plan.gpus))
    return out


def assumptions(plan) -> list[str]:
    a = prices()["assumptions"]
    gpu = gpu_facts(plan.gpu_type)
    lines = [
        f"base training FLOPs = 6 × {plan.shape['params_matmul']:,} matmul params × {plan.shape['training_tokens']:,} tokens "
        f"(data:param ratio {plan.shape['data_ratio']}) at MFU {a['mfu']:.0%} of {gpu['peak_bf16_tflops']} TFLOPS "
        f"bf16 per {plan.gpu_type}",
        f"mid-training ≈ {MID_TRAINING_TOKENS / 1e9:.1f}B tokens; SFT, RL and evaluations scaled from d20 by parameter count",
        f"shards: {plan.data['shards']} × {a['shard_mb']} MB at {a['download_mb_per_s']} MB/s; "
        f"tokenizer at {TOKENIZER_CHARS_PER_SECOND / 1e6:.0f}M chars/s",
        f"device batch {plan.shape['device_batch_size']} (est. {plan.shape['est_memory_gib']} GiB of "
        f"{gpu['memory_gib']} GB per GPU)",
        "every phase bills all GPUs of the node; prices per GPU-hour from " + str(PRICES_FILE),
    ]
    if plan.smoke:
        lines.insert(0, "smoke: fixed minutes per phase, dominated by torch.compile warm-up, not by FLOPs")
    return lines
