"""Model arithmetic: parameters, training tokens, shards and a device batch size, derived from depth.

Nothing here is a lookup table of presets: every number comes from nanochat's architecture rules (recorded in
each recipe's `[model]` table) so that `--depth 17` works as well as `d20`. The formulas are estimates good to
a few percent; nanochat prints the exact counts at the start of base_train.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 1024**3
# Optimizer state per parameter: fp32 master weights (4) + fp32 grads (4) + Adam/Muon moments (up to 8).
BYTES_PER_PARAM_TRAINING = 16
# Activation bytes kept per token per layer per unit of model width under bf16 autocast with flash attention
# (Korthikanti et al. give ~34·d without recomputation). Calibrated against upstream's known fits: d20 with a
# 65K vocab runs at device batch 16 but not 32 on 80 GB (upstream issue 443); d32 runs at 8 (run1000.sh).
ACTIVATION_BYTES_PER_TOKEN_LAYER_WIDTH = 34
# Logits in bf16, their fp32 upcast for the loss, and its gradient: bytes per token per vocabulary entry.
LOGIT_BYTES_PER_TOKEN_VOCAB = 10
# Memory kept free for the CUDA context, allocator fragmentation and NCCL buffers.
MEMORY_HEADROOM_FRACTION = 0.10
DEVICE_BATCH_CHOICES = (32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class ModelShape:
    """The numbers a plan needs about one model size."""

    depth: int
    model_dim: int
    n_heads: int
    vocab_size: int
    params_total: int
    params_matmul: int  # the weights tokens are multiplied with (no embedding lookups): 6 × this = FLOPs/token
    params_for_data_ratio: int
    data_ratio: float
    training_tokens: int
    total_batch_tokens: int
    iterations: int
    shards_needed: int
    shards_to_download: int
    device_batch_size: int
    est_memory_gib: float

    def to_dict(self) -> dict:
        return asdict(self)


def model_dim_for(depth: int, arch: dict) -> int:
    """Width = depth × aspect ratio; the `latest` pin rounds it up to a whole number of heads."""
    base = depth * arch["aspect_ratio"]
    if arch.get("round_dim_to_head", False):
        head = arch["head_dim"]
        return ((base + head - 1) // head) * head
    return base


def parameter_counts(depth: int, arch: dict) -> tuple[int, int]:
    """(all parameters, the parameters base_train multiplies by --target_param_data_ratio)."""
    total, counted, _ = _counts(depth, arch)
    return total, counted


def matmul_parameters(depth: int, arch: dict) -> int:
    return _counts(depth, arch)[2]


def _counts(depth: int, arch: dict) -> tuple[int, int, int]:
    d = model_dim_for(depth, arch)
    pad = arch.get("pad_vocab_to", 1)
    vocab = ((arch["vocab_size"] + pad - 1) // pad) * pad
    matrices = 12 * d * d * depth  # attention q,k,v,o (4·d²) + MLP (8·d²) per layer
    embedding = vocab * d  # token embedding (wte)
    unembedding = vocab * d  # lm_head, untied in every pin we support
    # `latest` gives every other layer (ending with the last) a value embedding: ceil(depth / 2) tables.
    value_embeds = (math.ceil(depth / 2) if arch.get("value_embeds") == "alternate_layers" else 0) * vocab * d
    total = int(matrices + embedding + unembedding + value_embeds)
    counted = {"all": total, "matrices+lm_head": matrices + unembedding}[arch["data_ratio_counts"]]
    return total, int(counted), int(matrices + unembedding)


def activation_bytes_per_token(depth: int, arch: dict) -> float:
    d = model_dim_for(depth, arch)
    per_layer = arch.get("activation_bytes_per_token_layer_width", ACTIVATION_BYTES_PER_TOKEN_LAYER_WIDTH)
    return depth * d * per_layer + arch["vocab_size"] * LOGIT_BYTES_PER_TOKEN_VOCAB


def training_memory_gib(depth: int, device_batch_size: int, arch: dict) -> float:
    params, _ = parameter_counts(depth, arch)
    tokens = device_batch_size * arch["max_seq_len"]
    return (params * BYTES_PER_PARAM_TRAINING + tokens * activation_bytes_per_token(depth, arch)) / GIB


def device_batch_size_for(depth: int, gpu_memory_gib: float, arch: dict) -> int:
    """The largest power-of-two batch (≤ 32) whose estimated training memory fits the GPU with headroom."""
    budget = gpu_memory_gib * (1 - MEMORY_HEADROOM_FRACTION)
    for batch in DEVICE_BATCH_CHOICES:
        if training_memory_gib(depth, batch, arch) <= budget:
            return batch
    return 0


def shards_for_tokens(tokens: float, data: dict) -> tuple[int, int]:
    """(shards the tokens need, shards to download): +10% margin, rounded up to 10, plus the validation shard."""
    chars = tokens * data["chars_per_token"]
    needed = max(1, math.ceil(chars / data["chars_per_shard"]))
    with_margin = int(math.ceil(needed * (1 + data.get("margin", 0.10)) / 10.0) * 10)
    return needed, with_margin


def total_batch_tokens(depth: int, arch: dict) -> int:
    """Tokens per optimizer step: fixed at `seed`; at `latest` nanochat picks it from the training horizon
    (2^19 tokens at d12's horizon, scaled by (tokens / d12 tokens)^0.383, rounded to a power of two)."""
    if not arch.get("auto_batch"):
        return int(arch["total_batch_size"])
    tokens = arch["data_ratio"] * parameter_counts(depth, arch)[1]
    reference = arch["data_ratio"] * parameter_counts(12, arch)[1]
    return 2 ** round(math.log2(2**19 * (tokens / reference) ** 0.383))


def derive_shape(depth: int, arch: dict, data: dict, gpu_memory_gib: float) -> ModelShape:
    total, counted = parameter_counts(depth, arch)
    tokens = int(arch["data_ratio"] * counted)
    needed, download = shards_for_tokens(tokens, data)
    batch = device_batch_size_for(depth, gpu_memory_gib, arch)
    d = model_dim_for(depth, arch)
    return ModelShape(
        depth=depth,
        model_dim=d,
        n_heads=d // arch["head_dim"],
        vocab_size=arch["vocab_size"],
        params_total=total,
        params_matmul=matmul_parameters(depth, arch),
        params_for_data_ratio=counted,
        data_ratio=arch["data_ratio"],
        training_tokens=tokens,
        total_batch_tokens=total_batch_tokens(depth, arch),
        iterations=tokens // total_batch_tokens(depth, arch),
        shards_needed=needed,
        shards_to_download=download,
        device_batch_size=batch,
        est_memory_gib=round(training_memory_gib(depth, max(batch, 1), arch), 1),
    )
