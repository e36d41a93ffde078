"""TEST DOUBLE of nanochat's scripts/chat_sft.py (supervised finetuning).

seed: loads --source (default mid) and needs HF_HOME (ARC, GSM8K, SmolTalk, MMLU evals),
identity_conversations.jsonl and words_alpha.txt; runs num_iterations (default: one epoch of
~22K rows / target_examples_per_step, capped) and saves chatsft_checkpoints/<tag>/ at step N-1,
rank 0, without optimizer state.
latest: loads the base model, inherits batch settings from its meta, warm-starts each rank's
optimizer shard when present; needs HF_HOME; saves at the end with one optim shard per rank.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

SEED_TRAIN_ROWS = 2251 + 1119 + 7473 + 10000 + 1000 + 300 + 300  # ARC-E, ARC-C, GSM8K, SmolTalk, identity, spelling
CHATCORE_TASKS = [("ARC-Easy", 0.25), ("ARC-Challenge", 0.25), ("MMLU", 0.25), ("GSM8K", 0.0), ("HumanEval", 0.0)]


def seed_main(ctx, a, p0):
    user_config = vars(a).copy()
    ctx.compute_init(a.device_type)
    ctx.wandb_init(a.run, "nanochat-sft")
    ctx.fail_point()
    _, _, meta = IO.find_model(ctx, a.source, a.model_tag, a.model_step)
    cfg = meta["model_config"]
    IO.require_hf(["ARC-Easy", "GSM8K", "SmolTalk"])
    IO.identity_conversations(ctx)
    IO.words_alpha(ctx)
    per_step = a.device_batch_size * ctx.world_size
    p0(f"Target examples per step: {a.target_examples_per_step}")
    p0(f"Device batch size: {a.device_batch_size}")
    p0(f"Examples per step is device_batch_size * ddp_world_size: {per_step}")
    assert a.target_examples_per_step % per_step == 0, "Target examples per step must be divisible by examples per step"
    p0(f"=> Setting grad accum steps: {a.target_examples_per_step // per_step}")
    if a.num_iterations == -1:
        assert a.num_epochs > 0, "num_epochs must be positive if num_iterations is -1"
        n = (SEED_TRAIN_ROWS // a.target_examples_per_step) * a.num_epochs
        if n > ctx.max_steps():
            p0(f"[nanochat double] num_iterations {n} capped to {ctx.max_steps()} (NANOCHAT_DOUBLE_MAX_STEPS)")
            n = ctx.max_steps()
    else:
        n = a.num_iterations
    clock = F.Clock(ctx)
    metrics, step = {}, 0
    for step in range(n):
        last_step = step == n - 1
        if last_step or step % a.eval_every == 0:
            val_loss = F.train_loss(step, n) / 3
            p0(f"Step {step:05d} | Validation loss: {val_loss:.6f}")
        if last_step or (step > 0 and step % a.eval_metrics_every == 0):
            metrics = {"mmlu_acc": F.accuracy("MMLU", step), "arc_easy_acc": F.accuracy("ARC-Easy", step)}
            p0(f"Step {step:05d} | " + ", ".join(f"{k}: {v:.6f}" for k, v in metrics.items()))
        if last_step:
            break
        clock.step()
        train_loss = F.train_loss(step, n) / 3
        p0(f"Step {step:05d}/{n:05d} | Training loss: {train_loss:.6f}| lrm: {1.0 - step / n:.6f}| num_tokens: {9000 + step:,}")
    if n == 0:
        raise NameError("name 'val_loss' is not defined")  # upstream's loop never ran either
    if ctx.master:
        ckpt_dir = os.path.join(IO.base_dir(), "chatsft_checkpoints", a.model_tag or f"d{cfg['n_layer']}")
        IO.save_checkpoint(ctx, ckpt_dir, step, {"step": step, "val_loss": val_loss, **metrics, "model_config": cfg},
                           optimizer=False)
        print(f"✅ Saved model checkpoint to {ckpt_dir}", flush=True)
    IO.report_log(ctx, "Chat SFT", [user_config, {
        "Training rows": SEED_TRAIN_ROWS, "Number of iterations": n,
        "Training loss": F.train_loss(n, n) / 3, "Validation loss": val_loss}])


def latest_main(ctx, a, p0):
    user_config = vars(a).copy()
    ctx.compute_init(a.device_type)
    p0(ctx.compute_dtype_line())
    p0(f"GPU: {S.FAKE_GPU} | Peak FLOPS (BF16): {989e12:.2e}")
    ctx.wandb_init(a.run, "nanochat-sft")
    ctx.fail_point()
    ckpt_dir, base_step, meta = IO.find_model(ctx, "base", a.model_tag, a.model_step)
    cfg, pre_user = meta["model_config"], meta.get("user_config", {})
    for name, fallback, source in [("max_seq_len", 2048, meta), ("device_batch_size", 32, meta),
                                   ("total_batch_size", 524288, meta), ("embedding_lr", 0.3, pre_user),
                                   ("unembedding_lr", 0.004, pre_user), ("matrix_lr", 0.02, pre_user)]:
        arg_val, pre_val = getattr(a, name), source.get(name)
        if arg_val is None:
            setattr(a, name, pre_val if pre_val is not None else fallback)
            p0(f"Inherited {name}={getattr(a, name)} from pretrained checkpoint")
        elif pre_val is not None and arg_val != pre_val:
            p0(f"NOTE: --{name.replace('_', '-')}={arg_val} overrides pretrained value of {pre_val}")
        else:
            p0(f"Using {name}={arg_val}")
    world_tokens = a.device_batch_size * a.max_seq_len * ctx.world_size
    assert a.total_batch_size % world_tokens == 0, \
        f"total_batch_size ({a.total_batch_size}) must be a multiple of {world_tokens}."
    grad_accum = a.total_batch_size // world_tokens
    p0(f"Tokens / micro-batch / rank: {a.device_batch_size} x {a.max_seq_len} = {a.device_batch_size * a.max_seq_len:,}")
    p0(f"Tokens / micro-batch: {world_tokens:,}")
    p0(f"Total batch size {a.total_batch_size:,} => gradient accumulation steps: {grad_accum}")
    IO.load_token_bytes()
    if a.load_optimizer:
        optim = os.path.join(ckpt_dir, f"optim_{base_step:06d}_rank{ctx.rank}.pt")
        if os.path.exists(optim):
            ctx.log("nanochat.checkpoint_manager", f"Loading optimizer state from {optim}")
            p0("Loaded optimizer state from pretrained checkpoint (momentum buffers only, LRs reset)")
        else:
            ctx.log("nanochat.checkpoint_manager", f"Optimizer checkpoint not found: {optim}")
            p0("WARNING: optimizer checkpoint not found, starting with fresh optimizer (slightly worse)")
    IO.require_hf(["SmolTalk", "MMLU", "GSM8K"] + (["ARC-Easy", "HumanEval"] if a.chatcore_every > 0 else []))
    p0(f"Training mixture: {460000 + 100000 * a.mmlu_epochs + 7473 * a.gsm8k_epochs:,} rows "
       f"(MMLU x{a.mmlu_epochs}, GSM8K x{a.gsm8k_epochs})")
    if a.num_iterations > 0:
        last = math.ceil((a.num_iterations - 1) / grad_accum)  # the data generator prefetches one batch
    else:
        last = ctx.max_steps()
        p0(f"[nanochat double] one epoch capped to {last} steps (NANOCHAT_DOUBLE_MAX_STEPS)")
    clock = F.Clock(ctx)
    step, val_bpb, min_val_bpb, total_time = 0, None, float("inf"), 0.0
    while True:
        last_step = step == last
        if last_step or (a.eval_every > 0 and step % a.eval_every == 0):
            val_bpb = F.bpb(step, last) * 0.5
            p0(f"Step {step:05d} | Validation bpb: {val_bpb:.4f}")
            min_val_bpb = min(min_val_bpb, val_bpb)
        if a.chatcore_every > 0 and (last_step or (step > 0 and step % a.chatcore_every == 0)):
            accs = {t: F.accuracy(t, step) for t, _ in CHATCORE_TASKS}
            for task, _ in CHATCORE_TASKS:
                p0(f"  {task}: {100 * accs[task]:.2f}%")
            centered = {t: (accs[t] - b) / (1 - b) for t, b in CHATCORE_TASKS}
            cat = [centered[t] for t in ("ARC-Easy", "ARC-Challenge", "MMLU")]
            p0(f"Step {step:05d} | ChatCORE: {sum(centered.values()) / 5:.4f} | ChatCORE_cat: {sum(cat) / 3:.4f}")
        if last_step:
            out_cfg = {k: cfg.get(k) for k in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern")}
            out_dir = os.path.join(IO.base_dir(), "chatsft_checkpoints", a.model_tag or f"d{cfg['n_layer']}")
            IO.save_checkpoint(ctx, out_dir, step, {"step": step, "val_bpb": val_bpb,
                                                    "model_config": {"sequence_len": a.max_seq_len, **out_cfg},
                                                    "user_config": user_config}, optimizer=True)
            break
        flops = 72 * cfg["n_layer"] * cfg["n_embd"] ** 2 * a.total_batch_size
        dt = clock.step(flops)
        step += 1
        progress = min(1.0, (1 + step * grad_accum) / a.num_iterations) if a.num_iterations > 0 else step / last
        if progress < a.warmup_ratio:
            lrm = (progress + 1e-8) / a.warmup_ratio
        elif progress <= 1.0 - a.warmdown_ratio:
            lrm = 1.0
        else:
            decay = (progress - (1.0 - a.warmdown_ratio)) / a.warmdown_ratio
            lrm = (1 - decay) + decay * a.final_lr_frac
        if step > 10:
            total_time += dt
        mfu = 100 * flops / dt / (989e12 * ctx.world_size)
        p0(f"step {step:05d} ({100 * progress:.2f}%) | loss: {F.train_loss(step, last) / 2:.6f} | lrm: {lrm:.2f} | "
           f"dt: {dt * 1000:.2f}ms | tok/sec: {int(a.total_batch_size / dt):,} | mfu: {mfu:.2f} | epoch: 1 | "
           f"total time: {total_time / 60:.2f}m")
    p0(f"Peak memory usage: {512.0 * cfg['n_layer']:.2f}MiB")
    p0(f"Total training time: {total_time / 60:.2f}m")
    p0(f"Minimum validation bpb: {min_val_bpb:.4f}")


def main():
    ctx = S.start("scripts/chat_sft.py", description="Supervised finetuning for chat" if S.load_pin()["name"] == "seed"
                  else "Supervised fine-tuning (SFT) the model")
    ctx.qualifier = getattr(ctx.args, "source", None)
    (seed_main if ctx.seed else latest_main)(ctx, ctx.args, ctx.print0)


if __name__ == "__main__":
    main()
