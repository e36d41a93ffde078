"""TEST DOUBLE of nanochat's scripts/infer_bench.py (latest only: inference benchmark sweep).

Asserts a single process (upstream refuses torchrun), loads the -i checkpoint (base|sft|rl; 'mid'
is a KeyError at latest), prints the card and the per-batch-size table with made-up timings, and
ends stdout with one JSON line carrying the same data, which is upstream's machine-readable contract.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/infer_bench.py", description="Inference benchmark")
a = ctx.args
ctx.qualifier = a.source
ctx.compute_init("")
assert ctx.world_size == 1, "infer_bench is a single GPU benchmark, run without torchrun"
ctx.fail_point()
_, step, meta = IO.find_model(ctx, a.source, a.model_tag, a.step)
cfg = meta["model_config"]
prompt_len = min(a.prompt_tokens, cfg["sequence_len"] - a.decode_tokens)
if prompt_len < a.prompt_tokens:
    print(f"note: clamping prompt to {prompt_len} tokens so prompt+decode fits sequence_len={cfg['sequence_len']}")
num_params = F.param_counts(cfg)["total"]
w_bytes = 2 * num_params
kv_store = 4 * cfg["n_layer"] * cfg["n_kv_head"] * (cfg["n_embd"] // cfg["n_head"])
context_mid = prompt_len + a.decode_tokens // 2
kv_read = kv_store * context_mid
peak_bw, peak_flops, vram = 3.35e12, 989e12, 80 * 2 ** 30
print("=" * 100)
print(f"Model: {a.source} {meta.get('model_tag', '')} (step {step}) | depth {cfg['n_layer']}, dim {cfg['n_embd']}, "
      f"heads {cfg['n_head']}, kv heads {cfg['n_kv_head']} (GQA)")
print(f"GPU: {S.FAKE_GPU} | peak bandwidth {peak_bw / 1e12:.2f} TB/s | peak compute {peak_flops / 1e12:.0f} TFLOPS | "
      f"VRAM {vram / 2 ** 30:.0f} GiB")
print("-" * 100)
print(f"Parameters: {num_params:,} ({num_params:,} bfloat16) | weight bytes as stored: {w_bytes / 2 ** 20:.0f} MiB")
print(f"KV cache: {kv_store:,} bytes/token stored | {kv_read:,} bytes read/step at context {context_mid} "
      f"(window pattern {cfg.get('window_pattern')})")
ceiling = peak_bw / (w_bytes + kv_read)
max_rows = int((vram - w_bytes) / (kv_store * cfg["sequence_len"]))
print(f"Theoretical decode ceiling at batch 1: {ceiling:,.0f} tok/s | max ~{max_rows:,} full-context rows in VRAM")
print("=" * 100)
payload = {"source": a.source, "step": step, "model_config": cfg, "gpu": S.FAKE_GPU,
           "peak_bandwidth_bytes_per_sec": peak_bw, "total_vram_bytes": vram, "num_params": num_params,
           "param_dtypes": {"bfloat16": num_params}, "weight_bytes": w_bytes, "kv_bytes_per_token": kv_store,
           "kv_read_bytes_per_step": kv_read, "context_mid": context_mid, "peak_flops_per_sec": peak_flops,
           "decode_flops_per_token": 2 * num_params, "ceiling_bs1_tok_per_sec": round(ceiling, 1),
           "max_full_context_rows": max_rows, "prompt_tokens": prompt_len, "decode_tokens": a.decode_tokens,
           "temperature": a.temperature, "sweep": []}
prefill_time = 0.02
print(f"Prefill (batch 1, {prompt_len} tokens): {prompt_len / prefill_time:,.0f} tok/s | MFU 35.0%")
payload["prefill"] = {"tok_per_sec": round(prompt_len / prefill_time, 1), "mfu_percent": 35.0, "time_sec": prefill_time}
header = f"{'batch':>6} {'TTFT ms':>9} {'TPOT ms':>9} {'tok/s':>10} {'MBU %':>7} {'MFU %':>7} {'VRAM GiB':>9} {'steps':>6}"
print(header)
print("-" * len(header))
for batch_size in [int(b) for b in a.batch_sizes.split(",")]:
    tpot = 0.004 + 0.00005 * batch_size
    steps = a.decode_tokens - 1
    tok_per_sec = batch_size / tpot
    mbu = 100 * ((w_bytes + batch_size * kv_read) / tpot) / peak_bw
    mfu = 100 * (batch_size * 2 * num_params / tpot) / peak_flops
    vram_used = w_bytes + batch_size * kv_store * (prompt_len + a.decode_tokens)
    print(f"{batch_size:>6} {prefill_time * 1e3:>9.1f} {tpot * 1e3:>9.2f} {tok_per_sec:>10,.0f} {mbu:>7.1f} {mfu:>7.2f} "
          f"{vram_used / 2 ** 30:>9.2f} {steps:>6}")
    payload["sweep"].append({"batch_size": batch_size, "ttft_sec": prefill_time, "tpot_sec": round(tpot, 6),
                             "tok_per_sec": round(tok_per_sec, 1), "mbu_percent": round(mbu, 2),
                             "mfu_percent": round(mfu, 4), "peak_vram_bytes": vram_used, "decode_steps": steps})
print("-" * len(header))
print(json.dumps(payload), flush=True)
