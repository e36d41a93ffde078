"""TEST DOUBLE of nanochat's scripts/base_train.py (pretraining); no model, no torch.

Checks the tokenizer, token_bytes, >= 2 shards (and row groups per rank), the eval bundle when
a CORE eval comes due (lazily, like upstream: at step core_metric_every and at the last step),
and for --resume_from_step the model/meta and one optimizer shard per rank. Prints the real log
lines of the selected pin and writes base_checkpoints/<tag>/{model,meta,optim_*_rank<r>}.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/base_train.py", description="Pretrain base model")
a, seed, p0 = ctx.args, ctx.seed, ctx.print0
user_config = vars(a).copy()
p0("\n  nanochat (TEST DOUBLE)\n")  # stands in for print_banner()
ctx.compute_init(a.device_type)
if not seed:
    p0(f"GPU: {S.FAKE_GPU} | Peak FLOPS (BF16): {989e12:.2e}")
    p0(ctx.compute_dtype_line())
ctx.wandb_init(a.run, "nanochat")
if not seed:
    p0("✓ Using Flash Attention 3: efficient, new and awesome.")
ctx.fail_point()

vocab_size = IO.load_tokenizer() or 65536
IO.load_token_bytes()
p0(f"Vocab size: {vocab_size:,}")
cfg = F.model_config(ctx.pin["name"], a.depth, a.aspect_ratio, a.head_dim, a.max_seq_len, vocab_size,
                     None if seed else a.window_pattern)
counts = F.param_counts(cfg)
world_tokens = a.device_batch_size * a.max_seq_len * ctx.world_size
if seed:
    for key in ("n_layer", "n_embd", "n_head", "n_kv_head"):
        label = {"n_layer": "num_layers", "n_embd": "model_dim", "n_head": "num_heads", "n_kv_head": "num_kv_heads"}[key]
        p0(f"{label}: {cfg[key]}")
    assert a.total_batch_size % world_tokens == 0
    p0(f"Tokens / micro-batch / rank: {a.device_batch_size} x {a.max_seq_len} = {a.device_batch_size * a.max_seq_len:,}")
    p0(f"Tokens / micro-batch: {world_tokens:,}")
    p0(f"Total batch size {a.total_batch_size:,} => gradient accumulation steps: {a.total_batch_size // world_tokens}")
    if a.total_batch_size != 2 ** 19:
        p0(f"Scaling LRs by {(a.total_batch_size / 2 ** 19) ** 0.5:.4f} for batch size {a.total_batch_size:,} (reference: {2 ** 19:,})")
    num_params = counts["wte"] + counts["lm_head"] + counts["transformer_matrices"]
    scaling_params = num_params
else:
    p0(f"Model config:\n{json.dumps(cfg, indent=2)}")
    num_params = counts["total"]
    scaling_params = counts["transformer_matrices"] + counts["lm_head"]

base_dir = IO.base_dir()
ckpt_dir = os.path.join(base_dir, "base_checkpoints", a.model_tag or f"d{a.depth}")
resuming = a.resume_from_step != -1
meta = None
if resuming:
    p0(f"Resuming optimization from step {a.resume_from_step}")
    step_tag = f"{a.resume_from_step:06d}"
    import zipfile
    for pt in (f"model_{step_tag}.pt", f"optim_{step_tag}_rank{ctx.rank}.pt"):
        if not zipfile.is_zipfile(IO.require(os.path.join(ckpt_dir, pt))):  # what torch.load says of a torn file
            raise RuntimeError(f"PytorchStreamReader failed reading zip archive: failed finding central directory ({pt})")
    with open(IO.require(os.path.join(ckpt_dir, f"meta_{step_tag}.json")), encoding="utf-8") as f:
        meta = json.load(f)
    # optimizer state is sharded per rank: resuming needs the same number of processes (on several nodes each node
    # holds only its own ranks' shards, so the shard says which world wrote it)
    import pickle
    with zipfile.ZipFile(os.path.join(ckpt_dir, f"optim_{step_tag}_rank{ctx.rank}.pt")) as zf:
        saved_world = pickle.loads(zf.read(f"optim_{step_tag}_rank{ctx.rank}/data.pkl")).get("world_size")
    if saved_world != ctx.world_size:
        raise RuntimeError(f"[nanochat double] the optimizer shards of step {a.resume_from_step} in {ckpt_dir} were "
                           f"written by {saved_world} processes but WORLD_SIZE is {ctx.world_size}")
    old = meta.get("model_config", {})
    if any(old.get(k) != cfg[k] for k in ("n_layer", "n_embd", "vocab_size")):
        raise RuntimeError(f"Error(s) in loading state_dict for GPT: size mismatch (checkpoint {old}, model {cfg})")

if not seed and a.fp8 and a.device_type not in ("", "cuda"):
    p0("Warning: FP8 training requires CUDA, ignoring --fp8 flag")
elif not seed and a.fp8:
    p0(f"✓ FP8 training enabled ({a.fp8_recipe} scaling) - converted {4 * a.depth}/{4 * a.depth + 1} linear layers, skipped 1 (too small)")
if seed:
    p0(f"Number of parameters: {num_params:,} (scaling: {scaling_params:,})")
else:
    p0("Parameter counts:")
    for key, value in counts.items():
        p0(f"{key:24s}: {value:,}")
fpt = F.flops_per_token(cfg, num_params, counts["wte"])
p0(f"Estimated FLOPs per token: {fpt:e}")
total_batch_size = a.total_batch_size
if not seed:
    # latest's muP-style scaling against a d12 reference: batch size, then LR and weight decay
    ref = F.param_counts(F.model_config("latest", 12, a.aspect_ratio, a.head_dim, a.max_seq_len, vocab_size, "L"))
    d_ref = a.target_param_data_ratio * (ref["transformer_matrices"] + ref["lm_head"])
    target = max(int(a.target_param_data_ratio * scaling_params), 1)
    if total_batch_size == -1:
        total_batch_size = 2 ** round(math.log2(2 ** 19 * (target / d_ref) ** 0.383))
        p0(f"Auto-computed optimal batch size: {total_batch_size:,} tokens")
    if total_batch_size != 2 ** 19:
        p0(f"Scaling LRs by {(total_batch_size / 2 ** 19) ** 0.5:.4f} for batch size {total_batch_size:,} (reference: {2 ** 19:,})")
    wd = a.weight_decay * math.sqrt(total_batch_size / 2 ** 19) * (d_ref / target)
    if wd != a.weight_decay:
        p0(f"Scaling weight decay from {a.weight_decay:.6f} to {wd:.6f} for depth {a.depth}")
if seed:
    p0(f"Scaling the LR for the AdamW parameters ∝1/√({cfg['n_embd']}/768) = {(cfg['n_embd'] / 768) ** -0.5:.6f}")

# training horizon, in upstream's order of precedence; a derived horizon is capped to stay fast
assert a.num_iterations > 0 or a.target_param_data_ratio > 0 or a.target_flops > 0
if a.num_iterations > 0:
    num_iterations = a.num_iterations
    p0(f"Using user-provided number of iterations: {num_iterations:,}")
else:
    if a.target_flops > 0:
        num_iterations = round(a.target_flops / (fpt * total_batch_size))
        p0(f"Calculated number of iterations from target FLOPs: {num_iterations:,}")
    else:
        num_iterations = int(a.target_param_data_ratio * scaling_params) // total_batch_size
        p0(f"Calculated number of iterations from target data:param ratio: {num_iterations:,}")
    if num_iterations > ctx.max_steps():
        p0(f"[nanochat double] capping num_iterations {num_iterations:,} -> {ctx.max_steps()} (NANOCHAT_DOUBLE_MAX_STEPS)")
        num_iterations = ctx.max_steps()
total_tokens = total_batch_size * num_iterations
p0(f"Total number of training tokens: {total_tokens:,}")
p0(f"Tokens : {'Params' if seed else 'Scaling params'} ratio: {total_tokens / scaling_params:.2f}")
p0(f"Total training FLOPs estimate: {fpt * total_tokens:e}")
if not seed:
    assert total_batch_size % world_tokens == 0, f"total_batch_size ({total_batch_size}) must be a multiple of {world_tokens}."
    p0(f"Tokens / micro-batch / rank: {a.device_batch_size} x {a.max_seq_len} = {a.device_batch_size * a.max_seq_len:,}")
    p0(f"Tokens / micro-batch: {world_tokens:,}")
    p0(f"Total batch size {total_batch_size:,} => gradient accumulation steps: {total_batch_size // world_tokens}")
IO.shards(ctx, ("train", "val") if a.eval_every > 0 else ("train",), warn=True)


def lr_multiplier(it):
    warmup = round(a.warmup_ratio * num_iterations) if seed else a.warmup_steps
    warmdown = round(a.warmdown_ratio * num_iterations)
    if it < warmup:
        return (it + 1) / warmup
    if it <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - it) / warmdown
    return progress + (1 - progress) * a.final_lr_frac


fail_at = os.environ.get("NANOCHAT_DOUBLE_FAIL_AT_STEP", "").strip()
clock = F.Clock(ctx)
IO.compile_warmup(ctx)
if resuming:
    step, val_bpb, loop = meta["step"], meta["val_bpb"], meta["loop_state"]
    min_val_bpb, smooth, total_time = loop["min_val_bpb"], loop["smooth_train_loss"], loop["total_training_time"]
else:
    step, val_bpb, min_val_bpb, smooth, total_time = 0, None, float("inf"), 0.0, 0.0
results, mfu, bpb_fmt = {}, 0.0, ".4f" if seed else ".6f"
while True:
    last_step = step == num_iterations
    if a.eval_every > 0 and (last_step or step % a.eval_every == 0):
        val_bpb = F.bpb(step, num_iterations)
        p0(f"Step {step:05d} | Validation bpb: {val_bpb:{bpb_fmt}}")
        min_val_bpb = min(min_val_bpb, val_bpb)
    results = {}
    if a.core_metric_every > 0 and (last_step or (step > 0 and step % a.core_metric_every == 0)):
        IO.eval_bundle(ctx)  # upstream downloads it here, hours into a run, before the final save
        results = F.core_eval(ctx, step)
        p0(f"Step {step:05d} | CORE metric: {results['core_metric']:.4f}")
    if a.sample_every > 0 and ctx.master and (last_step or (step > 0 and step % a.sample_every == 0)):
        F.samples(ctx)
    if last_step or (step > 0 and step != a.resume_from_step and a.save_every > 0 and step % a.save_every == 0):
        state = {"epoch": 1, "pq_idx": step // 8, "rg_idx": (step % 8) * ctx.world_size + ctx.rank}
        meta_out = {"step": step, "val_bpb": val_bpb, "model_config": cfg, "user_config": user_config,
                    "device_batch_size": a.device_batch_size, "max_seq_len": a.max_seq_len}
        if not seed:
            meta_out["total_batch_size"] = total_batch_size
        meta_out["dataloader_state_dict"] = state if not seed else {k: state[k] for k in ("pq_idx", "rg_idx")}
        meta_out["loop_state"] = {"min_val_bpb": min_val_bpb, "smooth_train_loss": smooth, "total_training_time": total_time}
        IO.save_checkpoint(ctx, ckpt_dir, step, meta_out, optimizer=True)
    if fail_at and int(fail_at) == step:
        sys.stdout.flush()
        raise RuntimeError(f"[nanochat double] injected failure at step {step} (NANOCHAT_DOUBLE_FAIL_AT_STEP)")
    if last_step:
        break
    dt = clock.step(fpt * total_batch_size)
    lrm = lr_multiplier(step)
    smooth = 0.9 * smooth + 0.1 * F.train_loss(step, num_iterations)
    loss = smooth / (1 - 0.9 ** (step + 1))
    mfu = 100 * fpt * total_batch_size / dt / (989e12 * ctx.world_size)
    if step > 10:
        total_time += dt
    eta = f" | eta: {(num_iterations - step) * total_time / (step - 10) / 60:.1f}m" if step > 10 else ""
    head = (f"step {step:05d}/{num_iterations:05d} ({100 * step / num_iterations:.2f}%) | loss: {loss:.6f} | "
            f"lrm: {lrm:.2f} | dt: {dt * 1000:.2f}ms | tok/sec: {int(total_batch_size / dt):,} | ")
    if seed:
        p0(head + f"mfu: {mfu:.2f} | total time: {total_time / 60:.2f}m{eta}")
    else:
        epoch = f"1 pq: {step // 8} rg: {(step % 8) * ctx.world_size + ctx.rank}"
        p0(head + f"bf16_mfu: {mfu:.2f} | epoch: {epoch} | total time: {total_time / 60:.2f}m{eta}")
    step += 1

p0(f"Peak memory usage: {1024.0 * a.depth * a.device_batch_size / 4:.2f}MiB")
p0(f"Total training time: {total_time / 60:.2f}m")
if val_bpb is not None:
    p0(f"Minimum validation bpb: {min_val_bpb:{bpb_fmt}}")
IO.report_log(ctx, "Base model training", [
    user_config,
    {"Number of parameters": num_params, "Number of FLOPs per token": f"{fpt:e}",
     "Calculated number of iterations": num_iterations, "Number of training tokens": total_tokens,
     "Tokens : Params ratio": total_tokens / num_params, "DDP world size": ctx.world_size,
     "warmup_ratio": a.warmup_ratio if seed else None, "warmdown_ratio": a.warmdown_ratio,
     "final_lr_frac": a.final_lr_frac},
    {"Minimum validation bpb": min_val_bpb if val_bpb is not None else None, "Final validation bpb": val_bpb,
     "CORE metric estimate": results.get("core_metric"), "MFU %": f"{mfu:.2f}%",
     "Total training flops": f"{fpt * total_tokens:e}", "Total training time": f"{total_time / 60:.2f}m"},
])
