"""TEST DOUBLE of nanochat's scripts/mid_train.py (seed only; upstream removed midtraining later).

Needs a base checkpoint, the tokenizer, token_bytes.pt, a non-empty HF cache (HF_HOME: SmolTalk,
MMLU, GSM8K), identity_conversations.jsonl and words_alpha.txt (SpellingBee tasks) in the base dir.
Saves mid_checkpoints/<tag>/ once at the end, rank 0 only (model, meta, optim_*_rank0), unless
--dry_run. Step count: upstream stops when the data generator reaches --num_iterations, which
prefetches one batch, so the last step is ceil((N-1)/grad_accum); -1 (one epoch) is capped.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/mid_train.py", description="Midtrain the model")
a, p0 = ctx.args, ctx.print0
user_config = vars(a).copy()
ctx.compute_init(a.device_type)
ctx.wandb_init(a.run, "nanochat-mid")
ctx.fail_point()
_, base_step, meta = IO.find_model(ctx, "base", a.model_tag, a.model_step)
if meta.get("device_batch_size") is not None and a.device_batch_size > meta["device_batch_size"]:
    p0(f"FOOTGUN WARNING: base model training used device_batch_size {meta['device_batch_size']}, "
       "did you pass in a good --device_batch_size to this script?")
cfg = meta["model_config"]
world_tokens = a.device_batch_size * a.max_seq_len * ctx.world_size
assert a.total_batch_size % world_tokens == 0
grad_accum = a.total_batch_size // world_tokens
p0(f"Tokens / micro-batch / rank: {a.device_batch_size} x {a.max_seq_len} = {a.device_batch_size * a.max_seq_len:,}")
p0(f"Tokens / micro-batch: {world_tokens:,}")
p0(f"Total batch size {a.total_batch_size:,} => gradient accumulation steps: {grad_accum}")
IO.load_token_bytes()
IO.require_hf(["SmolTalk", "MMLU", "GSM8K"])
IO.identity_conversations(ctx)
IO.words_alpha(ctx)

if a.num_iterations > 0:
    last = math.ceil((a.num_iterations - 1) / grad_accum)
else:
    last = ctx.max_steps()  # one epoch of ~850K conversations upstream
    p0(f"[nanochat double] one epoch capped to {last} steps (NANOCHAT_DOUBLE_MAX_STEPS)")
clock = F.Clock(ctx)
step, val_bpb, min_val_bpb, total_time = 0, None, float("inf"), 0.0
base_dir = IO.base_dir()
while True:
    last_step = step == last
    if a.eval_every > 0 and (last_step or step % a.eval_every == 0):
        val_bpb = F.bpb(step, last) * 0.5
        p0(f"Step {step:05d} | Validation bpb: {val_bpb:.4f}")
        min_val_bpb = min(min_val_bpb, val_bpb)
    if ctx.master and last_step and not a.dry_run:
        out_cfg = {"sequence_len": a.max_seq_len, "vocab_size": cfg["vocab_size"], "n_layer": cfg["n_layer"],
                   "n_head": cfg["n_head"], "n_kv_head": cfg["n_kv_head"], "n_embd": cfg["n_embd"]}
        ckpt_dir = os.path.join(base_dir, "mid_checkpoints", a.model_tag or f"d{cfg['n_layer']}")
        IO.save_checkpoint(ctx, ckpt_dir, step, {"step": step, "val_bpb": val_bpb, "model_config": out_cfg,
                                                 "user_config": user_config}, optimizer=True)
    if last_step:
        break
    flops = 72 * cfg["n_layer"] * cfg["n_embd"] ** 2 * a.total_batch_size
    dt = clock.step(flops)
    step += 1
    progress = min(1.0, (1 + step * grad_accum) / a.num_iterations) if a.num_iterations > 0 else step / last
    lrm = 1 if progress < 0.8 else 1 - (progress - 0.8) / 0.2
    if step > 10:
        total_time += dt
    mfu = 100 * flops / dt / (989e12 * ctx.world_size)
    p0(f"step {step:05d} ({100 * progress:.2f}%) | loss: {F.train_loss(step, last) / 2:.6f} | lrm: {lrm:.2f} | "
       f"dt: {dt * 1000:.2f}ms | tok/sec: {int(a.total_batch_size / dt):,} | mfu: {mfu:.2f} | "
       f"total time: {total_time / 60:.2f}m")
p0(f"Peak memory usage: {512.0 * cfg['n_layer']:.2f}MiB")
p0(f"Total training time: {total_time / 60:.2f}m")
p0(f"Minimum validation bpb: {min_val_bpb:.4f}")
if not a.dry_run:
    IO.report_log(ctx, "Midtraining", [
        user_config, {"Number of iterations": step, "DDP world size": ctx.world_size},
        {"Minimum validation bpb": min_val_bpb},
    ])
