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
# Work that is not base pretraining is stated in each recipe phase's `cost` table for d20 on 8 GPUs (GPU-hours,
# or tokens) and scaled here by parameters / D20_PARAMS.
TOKENIZER_CHARS_PER_SECOND = 25e6

# A full checkpoint (model + optimizer state) is about 12 bytes per parameter (fp32 weights, Muon momentum, AdamW
# moments for the embeddings); base and mid-training keep one, SFT and RL save the model only (4 bytes/param).
FULL_CHECKPOINT_BYTES_PER_PARAM = 12
MODEL_ONLY_BYTES_PER_PARAM = 4
PRESEEDED_BYTES = 3e9  # eval bundle, identity/word lists, HuggingFace task data, tiktoken encodings
MARGIN = 1.1


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


def _phase_hours(phase, plan, flops_per_second: float) -> float:
    """Hours of one phase by the cost model its recipe names (`cost` in the phase's table)."""
    a = prices()["assumptions"]
    cost, params = phase.cost, plan.shape["params_matmul"]
    if plan.smoke and not plan.on_gpus:
        return cost.get("rehearsal_minutes", cost.get("smoke_minutes", 1.0)) / 60
    if plan.smoke:
        return cost.get("smoke_minutes", 1.0) / 60
    evals = _gpu_hours_to_hours(cost.get("eval_gpu_hours_at_d20", 0.0), params, plan.world_size)
    model = cost.get("model", "fixed")
    if model == "download":
        return plan.data["shards"] * a["shard_mb"] / a["download_mb_per_s"] / 3600
    if model == "tokenizer":
        return 2e9 / TOKENIZER_CHARS_PER_SECOND / 3600
    if model == "base_training":
        return base_training_hours(plan.shape, plan.world_size, plan.gpu_type) + evals
    if model == "training_tokens":
        return 6 * params * cost["tokens"] / flops_per_second / 3600 + evals
    if model == "gpu_hours":
        return _gpu_hours_to_hours(cost["gpu_hours_at_d20"], params, plan.world_size) + evals
    return cost.get("minutes", 1.0) / 60


def estimate_phases(plan) -> list[PhaseEstimate]:
    gpu = gpu_facts(plan.gpu_type)
    flops_per_second = plan.world_size * gpu["peak_bf16_tflops"] * 1e12 * prices()["assumptions"]["mfu"]
    # Every node is billed while any phase runs, including the CPU-bound data and tokenizer phases (which only the
    # first node works on). Scaling across nodes is assumed linear at the same MFU.
    billed = plan.world_size if plan.on_gpus else 0  # the rehearsal rents nothing
    return [PhaseEstimate(phase.name, _phase_hours(phase, plan, flops_per_second), billed) for phase in plan.phases]


def assumptions(plan) -> list[str]:
    a = prices()["assumptions"]
    gpu = gpu_facts(plan.gpu_type)
    lines = [
        f"base training FLOPs = 6 × {plan.shape['params_matmul']:,} matmul params × {plan.shape['training_tokens']:,} tokens "
        f"(data:param ratio {plan.shape['data_ratio']}) at MFU {a['mfu']:.0%} of {gpu['peak_bf16_tflops']} TFLOPS "
        f"bf16 per {plan.gpu_type}",
        "other phases from their recipe's cost table (tokens, or GPU-hours at d20 scaled by parameter count)",
        f"shards: {plan.data['shards']} × {a['shard_mb']} MB at {a['download_mb_per_s']} MB/s; "
        f"tokenizer at {TOKENIZER_CHARS_PER_SECOND / 1e6:.0f}M chars/s",
        f"device batch {plan.shape['device_batch_size']} (est. {plan.shape['est_memory_gib']} GiB of "
        f"{gpu['memory_gib']} GB per GPU) × {plan.shape.get('grad_accum_steps', 1)} gradient accumulation step(s) × "
        f"{plan.world_size} processes = the total batch of {plan.shape['total_batch_tokens']:,} tokens",
        "every phase bills all GPUs of every node; prices per GPU-hour from " + str(PRICES_FILE),
    ]
    if plan.nodes > 1:
        lines.append(f"{plan.nodes} nodes scale linearly at the same MFU (a cluster's interconnect decides how close it comes)")
    if plan.smoke and not plan.on_gpus:
        return ["rehearsal: minutes per phase as measured with the real nanochat on a 2-core x86 machine (one thread per "
                "process, as nanochat sets OMP_NUM_THREADS=1); nothing is billed"]
    if plan.smoke:
        lines.insert(0, "smoke: fixed minutes per phase, dominated by torch.compile warm-up, not by FLOPs")
    return lines


def disk_need(plan) -> dict[str, float]:
    """Bytes the plan writes, by kind: shards, checkpoints, pre-seeded files (with a 10% margin in `total`)."""
    shard_bytes = plan.data["shards"] * prices()["assumptions"]["shard_mb"] * 1e6
    params = plan.shape["params_total"]
    checkpoints = params * (2 * FULL_CHECKPOINT_BYTES_PER_PARAM + MODEL_ONLY_BYTES_PER_PARAM * (2 if plan.with_rl else 1))
    need = {"shards": shard_bytes, "checkpoints": float(checkpoints), "pre-seeded files": PRESEEDED_BYTES}
    need["total"] = sum(need.values()) * MARGIN
    return need
