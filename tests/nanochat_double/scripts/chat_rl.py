"""TEST DOUBLE of nanochat's scripts/chat_rl.py (RL on GSM8K).

Loads --source (seed, default sft) or sft (latest); needs that checkpoint, the tokenizer and
HF_HOME (GSM8K). Steps = (7473 // examples_per_step) * num_epochs, capped by
NANOCHAT_DOUBLE_MAX_STEPS. Rank 0 saves chatrl_checkpoints/<tag>/ every --save_every steps
(step > 0) and at the last step, without optimizer state; it never resumes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

GSM8K_TRAIN_ROWS = 7473

ctx = S.start("scripts/chat_rl.py", description="Reinforcement learning on GSM8K")
a, p0 = ctx.args, ctx.print0
source = a.source if ctx.seed else "sft"
ctx.qualifier = source
user_config = vars(a).copy()
ctx.compute_init(a.device_type)
ctx.wandb_init(a.run, "nanochat-rl")
ctx.fail_point()
_, _, meta = IO.find_model(ctx, source, a.model_tag, a.model_step)
cfg = meta["model_config"]
IO.require_hf(["GSM8K"])
num_steps = (GSM8K_TRAIN_ROWS // a.examples_per_step) * a.num_epochs
p0(f"Calculated number of steps: {num_steps}")
if num_steps > ctx.max_steps():
    p0(f"[nanochat double] capping to {ctx.max_steps()} steps (NANOCHAT_DOUBLE_MAX_STEPS)")
    num_steps = ctx.max_steps()
p0(f"Total sequences per step: {a.examples_per_step * a.num_samples}")
assert a.examples_per_step % ctx.world_size == 0, "Desired examples per step must be divisible by the number of ranks"
per_rank = a.examples_per_step // ctx.world_size
p0(f"Calculated examples per rank: {per_rank}")
assert a.num_samples % a.device_batch_size == 0  # upstream: inputs_all.size(0) % device_batch_size == 0
passes = a.num_samples // a.device_batch_size
ckpt_dir = os.path.join(IO.base_dir(), "chatrl_checkpoints", a.model_tag or f"d{cfg['n_layer']}")
for step in range(num_steps):
    if step % a.eval_every == 0:
        p0(f"Step {step} | " + ", ".join(f"Pass@{k}: {min(1.0, 0.02 * k + 0.001 * step):.4f}"
                                         for k in range(1, a.device_batch_size + 1)))
    for example_step in range(per_rank):
        for pass_idx in range(passes):
            p0(f"Step {step}/{num_steps} | Example step {example_step} | Pass {pass_idx} | loss: "
               f"{0.001 * (example_step + 1):.6f} | Average reward: {0.0625 * (pass_idx + 1)}")
    p0(f"Step {step}/{num_steps} | Average reward: {0.0625 + 0.001 * step} | Average sequence length: {180.0 + step:.2f}")
    ctx.step_sleep()
    if ctx.master and ((step > 0 and step % a.save_every == 0) or step == num_steps - 1):
        IO.save_checkpoint(ctx, ckpt_dir, step, {"model_config": cfg}, optimizer=False)
        print(f"✅ Saved model checkpoint to {ckpt_dir}", flush=True)
IO.report_log(ctx, "Chat RL", [user_config])
