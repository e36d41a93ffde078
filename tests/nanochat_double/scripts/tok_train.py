"""TEST DOUBLE of nanochat's scripts/tok_train.py (BPE tokenizer training); trains nothing.

Needs >= 2 shards (it reads every shard but the last, the validation one). Writes
tokenizer/tokenizer.pkl (a small pickle recording vocab_size, which later scripts check against
checkpoints) and tokenizer/token_bytes.pt (marker bytes). Seed also logs the report section.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/tok_train.py", description="Train a BPE tokenizer")
args = ctx.args
print(f"max_chars: {args.max_chars:,}", flush=True)
ctx.maybe_hang()  # tok_train prints with plain print(); hang after its first line like the others
print(f"doc_cap: {args.doc_cap:,}", flush=True)
print(f"vocab_size: {args.vocab_size:,}", flush=True)
ctx.fail_point()
IO.shards(ctx, splits=("train",))
print("Training time: 0.01s", flush=True)
pkl, token_bytes = IO.write_tokenizer(args.vocab_size)
print(f"Saved tokenizer encoding to {pkl}", flush=True)
print(f"Saved token_bytes to {token_bytes}", flush=True)
IO.report_log(ctx, "Tokenizer training", [
    vars(args), {"train_time": 0.01}, {"num_special_tokens": 9},
    {"token_bytes_min": 1, "token_bytes_max": 32, "token_bytes_mean": 6.5, "token_bytes_std": 2.8},
])
