"""TEST DOUBLE of nanochat's scripts/base_loss.py (seed only: train/val bpb and samples of the base model).

Needs a base checkpoint (largest d<N> tag and last step unless --model_tag/--model_step), the
tokenizer, token_bytes.pt and >= 2 shards. Keeps upstream's assertion that split_tokens divides by
device_batch_size * sequence_len * world_size. Prints `train bpb: x.xxxx` / `val bpb: x.xxxx`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/base_loss.py", description="Evaluate loss on train/val splits and sample from model")
a = ctx.args
ctx.compute_init(a.device_type)
ctx.fail_point()
_, step, meta = IO.find_model(ctx, "base", a.model_tag, a.model_step)
sequence_len = meta["model_config"]["sequence_len"]
tokens_per_step = a.device_batch_size * sequence_len * ctx.world_size
assert a.split_tokens % tokens_per_step == 0, "split_tokens must be divisible by tokens_per_step"
IO.load_token_bytes()
IO.shards(ctx)
results = {}
for split, value in (("train", F.bpb(step, step) - 0.01), ("val", F.bpb(step, step))):
    ctx.print0(f"{split} bpb: {value:.4f}")
    results[split] = value
samples = F.samples(ctx) if ctx.master else []
IO.report_log(ctx, "Base model loss", [
    {"train bpb": results["train"], "val bpb": results["val"]},
    {f"sample {i}": s for i, s in enumerate(samples)},
])
