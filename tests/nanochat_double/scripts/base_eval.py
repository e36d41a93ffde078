"""TEST DOUBLE of nanochat's scripts/base_eval.py (CORE metric of the base model).

seed: --hf-path needs HF_HOME; else the base checkpoint. Note upstream declares --step as a str
there, so `--step N` crashes in load_checkpoint ("Unknown format code 'd'"); the double does too.
latest: --eval core,bpb,sample (bpb needs >= 2 shards). CORE needs eval_bundle/ (core.yaml,
eval_meta_data.csv) unless NANOCHAT_DOUBLE_NETWORK=1. Writes base_eval/base_model_<step>.csv.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402


def write_csv(ctx, slug, out):
    path = os.path.join(IO.base_dir(), "base_eval", f"{slug}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(f"{'Task':<35}, {'Accuracy':<10}, {'Centered':<10}\n")
        for label, acc in out["results"].items():
            f.write(f"{label:<35}, {acc:<10.6f}, {out['centered_results'][label]:<10.6f}\n")
        f.write(f"{'CORE':<35}, {'':<10}, {out['core_metric']:<10.6f}\n")
    return path


def main():
    ctx = S.start("scripts/base_eval.py", description=None if S.load_pin()["name"] == "seed" else "Base model evaluation")
    a = ctx.args
    modes = {"core"} if ctx.seed else {m.strip() for m in a.eval.split(",")}
    if modes - {"core", "bpb", "sample"}:
        ctx.parser.error(f"Invalid eval modes: {modes - {'core', 'bpb', 'sample'}}. Valid: {{'core', 'bpb', 'sample'}}")
    ctx.compute_init("" if ctx.seed else a.device_type)
    ctx.fail_point()
    if ctx.seed and a.hf_path is not None:
        ctx.print0(f"Loading huggingface model from: {a.hf_path}")
        IO.require_env_dir("HF_HOME", f"'{a.hf_path}' on the Hub")
        name, slug, step = a.hf_path, a.hf_path.replace("/", "-"), 0
    else:
        if ctx.seed and a.step is not None:
            raise ValueError("Unknown format code 'd' for object of type 'str'")  # upstream bug, see docstring
        _, step, meta = IO.find_model(ctx, "base", a.model_tag, a.step)
        name, slug = f"base_model (step {step})", f"base_model_{step:06d}"
    if not ctx.seed:
        ctx.print0(f"Evaluating model: {name}")
        ctx.print0(f"Eval modes: {', '.join(sorted(modes))}")
        IO.load_token_bytes()
    if "sample" in modes:
        ctx.print0("\n" + "=" * 80 + "\nModel Samples\n" + "=" * 80 + "\n\nConditioned samples:")
        if ctx.master:
            for prompt in F.SAMPLE_PROMPTS:
                ctx.print0("-" * 80 + f"\n<|bos|>{prompt} the the of")
    if "bpb" in modes:
        ctx.print0("\n" + "=" * 80 + "\nBPB Evaluation\n" + "=" * 80)
        IO.shards(ctx, warn=True)
        for split, value in (("train", F.bpb(step, step) - 0.01), ("val", F.bpb(step, step))):
            ctx.print0(f"{split} bpb: {value:.6f}")
    if "core" not in modes:
        return
    if not ctx.seed:
        ctx.print0("\n" + "=" * 80 + "\nCORE Evaluation\n" + "=" * 80)
    IO.eval_bundle(ctx)
    out = F.core_eval(ctx, step)
    if ctx.master:
        path = write_csv(ctx, slug, out)
        if ctx.seed:
            ctx.print0("=" * 80 + f"\nModel: {name}\n" + "=" * 80)
            with open(path, encoding="utf-8") as f:
                ctx.print0(f.read())
        else:
            ctx.print0(f"\nResults written to: {path}")
            ctx.print0(f"CORE metric: {out['core_metric']:.4f}")
    IO.report_log(ctx, "Base model evaluation", [
        {"Model": name, "CORE metric": out["core_metric"] if ctx.master else None},
        out["centered_results"] if ctx.master else {},
    ])


if __name__ == "__main__":
    main()
