"""TEST DOUBLE of nanochat's scripts/tok_eval.py (compares our tokenizer with GPT-2/GPT-4's).

Like upstream it has no argparse (extra arguments are ignored). Needs >= 2 shards (first train
and the val batch), tiktoken's gpt2/cl100k encodings (TIKTOKEN_CACHE_DIR must be a non-empty dir,
else a real run downloads them) and tokenizer/tokenizer.pkl. Prints the vocab sizes and tables.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/tok_eval.py", parse=False)
ctx.fail_point()
IO.shards(ctx)
IO.require_env_dir("TIKTOKEN_CACHE_DIR", "openaipublic.blob.core.windows.net for tiktoken's gpt2 encoding")
ours = IO.load_tokenizer() or 65536
print("\nVocab sizes:", flush=True)
ctx.maybe_hang()
print(f"GPT-2: 50257\nGPT-4: 100277\nOurs: {ours}", flush=True)
label = ctx.pin["data_label"]
texts = [("news", 1819), ("korean", 893), ("code", 1259), ("math", 1834), ("science", 1112),
         (f"{label}-train", 35500), (f"{label}-val", 35200)]
report = []
for name, ratio in (("GPT-2", 4.1), ("GPT-4", 4.4)):
    print(f"\nComparison with {name}:\n" + "=" * 95, flush=True)
    print(f"{'Text Type':<10} {'Bytes':<8} {name:<15} {'Ours':<15} {'Relative':<12} {'Better':<10}", flush=True)
    print(f"{'':10} {'':8} {'Tokens':<7} {'Ratio':<7} {'Tokens':<7} {'Ratio':<7} {'Diff %':<12}\n" + "-" * 95, flush=True)
    report += [f"### Comparison with {name}", "",
               f"| Text Type | Bytes | {name} Tokens | {name} Ratio | Ours Tokens | Ours Ratio | Relative Diff % |",
               "|-----------|-------|--------------|--------------|-------------|------------|-----------------|"]
    for text, nbytes in texts:
        theirs, mine = int(nbytes / ratio), int(nbytes / 4.2)
        diff = (theirs - mine) / theirs * 100
        better = "Ours" if mine < theirs else name
        print(f"{text:<10} {nbytes:<8} {theirs:<7} {nbytes / theirs:<7.2f} {mine:<7} {nbytes / mine:<7.2f} "
              f"{diff:+7.1f}%     {better:<10}", flush=True)
        report.append(f"| {text} | {nbytes} | {theirs} | {nbytes / theirs:.2f} | {mine} | {nbytes / mine:.2f} | {diff:+.1f}% |")
    report.append("")
IO.report_log(ctx, "Tokenizer evaluation", ["\n".join(report)])
