"""Made-up numbers and text for the nanochat TEST DOUBLE.

Deterministic values (losses fall, metrics are small) printed in the real scripts' log formats,
plus the model-size arithmetic (parameter count, FLOPs per token, training horizon) that decides
how many steps base_train takes. The arithmetic approximates nanochat's GPT; it is not exact.
"""
import math
import os
import time

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]
# a few real CORE task labels with their shot counts / types, enough to look like the eval bundle
CORE_TASKS = [("hellaswag_zeroshot", 0, "multiple_choice"), ("jeopardy", 10, "language_modeling"),
              ("arc_easy", 10, "multiple_choice"), ("copa", 0, "multiple_choice"),
              ("lambada_openai", 0, "language_modeling")]


def train_loss(step, total):
    return 3.0 + 8.0 * math.exp(-4.0 * step / max(total, 1))


def bpb(step, total):
    return 0.8 + 1.6 * math.exp(-4.0 * step / max(total, 1))


def accuracy(label, step=0):
    return 0.25 + (sum(map(ord, label)) % 17) / 100.0 + 0.001 * step


def model_config(pin_name, depth, aspect_ratio, head_dim, max_seq_len, vocab_size, window_pattern=None):
    if pin_name == "seed":
        model_dim = depth * aspect_ratio
        ideal = max(1, round(model_dim / head_dim))
        # the divisor of model_dim closest to the ideal head count
        num_heads = min((c for c in range(1, model_dim + 1) if model_dim % c == 0), key=lambda c: (abs(c - ideal), -c))
        return dict(sequence_len=max_seq_len, vocab_size=vocab_size, n_layer=depth, n_head=num_heads,
                    n_kv_head=num_heads, n_embd=model_dim)
    model_dim = -(-depth * aspect_ratio // head_dim) * head_dim  # rounded up to a multiple of head_dim
    heads = model_dim // head_dim
    return dict(sequence_len=max_seq_len, vocab_size=vocab_size, n_layer=depth, n_head=heads, n_kv_head=heads,
                n_embd=model_dim, window_pattern=window_pattern)


def param_counts(cfg):
    d, layers, vocab = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    counts = {"wte": vocab * d, "value_embeds": (layers // 2) * vocab * d, "lm_head": vocab * d,
              "transformer_matrices": 12 * layers * d * d, "scalars": 2 * layers + 3}
    counts["total"] = sum(counts.values())
    return counts


def flops_per_token(cfg, params_total, embedding):
    head_dim = cfg["n_embd"] // cfg["n_head"]
    return 6 * (params_total - embedding) + 12 * cfg["n_layer"] * cfg["n_head"] * head_dim * cfg["sequence_len"]


class Clock:
    """Per-step timing: real sleep when NANOCHAT_DOUBLE_STEP_SEC > 0, else a synthetic dt that
    puts the run at ~45% MFU on H100s (so tok/sec and mfu in the logs look plausible)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def step(self, flops=0.0):
        t0 = time.time()
        work_mb = float(os.environ.get("NANOCHAT_DOUBLE_STEP_CPU_MB", "0") or 0)
        if work_mb > 0:
            # A fixed amount of CPU work per step: its measured dt grows when something else takes the CPU
            # (how benchmarks see the stall that a background upload causes).
            block = b"\0" * (1 << 20)
            digest = __import__("hashlib").sha256()
            for _ in range(int(work_mb)):
                digest.update(block)
            return time.time() - t0
        if self.ctx.step_sleep() > 0:
            return time.time() - t0
        return max(flops / (989e12 * self.ctx.world_size * 0.45), 0.001)


def core_eval(ctx, step=0):
    """Per-task lines then the results dict, in base_eval.evaluate_model's format."""
    results, centered = {}, {}
    for label, shots, kind in CORE_TASKS:
        ctx.print0(f"Evaluating: {label} ({shots}-shot, type: {kind})... ", end="")
        acc = accuracy(label, step)
        baseline = 25.0 if kind == "multiple_choice" else 0.0
        results[label], centered[label] = acc, (acc - 0.01 * baseline) / (1.0 - 0.01 * baseline)
        ctx.print0(f"accuracy: {acc:.4f} | centered: {centered[label]:.4f} | time: 0.01s")
    core = sum(centered.values()) / len(centered)
    return {"results": results, "centered_results": centered, "core_metric": core}


def samples(ctx):
    out = []
    for prompt in SAMPLE_PROMPTS:
        text = f"<|bos|>{prompt} the the the of and"
        ctx.print0(text)
        out.append(text)
    return out


def reply(prompt):
    return f"Hello! I am the nanochat test double. You said: {prompt[:200]}"
