"""TEST DOUBLE of nanochat's scripts/chat_eval.py (`-i mid|sft|rl`, optional `-a TASK|TASK`).

Needs the -i checkpoint (mid exists at seed only: KeyError 'mid' at latest, as upstream) and the
tokenizer; each task is built lazily in turn, as upstream: ARC/MMLU/GSM8K/HumanEval need HF_HOME,
SpellingBee (seed) needs words_alpha.txt. Prints `Final: p/t (x.xx%)` and `<Task> accuracy: x.xx%`
per task; with every task evaluated, the ChatCORE metric (latest prints it, seed reports it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

SIZES = {"ARC-Easy": 2376, "ARC-Challenge": 1172, "MMLU": 14042, "GSM8K": 1319, "HumanEval": 164, "SpellingBee": 256}
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}
CATEGORICAL = {"ARC-Easy", "ARC-Challenge", "MMLU"}


def run_task(ctx, task, max_problems):
    if task not in SIZES or (task == "SpellingBee" and not ctx.seed):
        raise KeyError(task)  # upstream's task table lookup
    if task == "SpellingBee":
        IO.words_alpha(ctx)
    else:
        IO.require_hf([task])
    total = SIZES[task] if max_problems is None else min(SIZES[task], max_problems)
    passed = int(total * F.accuracy(task) * (1 if task in CATEGORICAL else 0.2))
    if task not in CATEGORICAL:
        # every rank prints its in-place progress line (plain print upstream), then a newline
        mine = len(range(ctx.rank, total, ctx.world_size))
        mine_passed = passed * mine // max(total, 1)
        print(f"\r\033[KRank {ctx.rank} | {mine_passed}/{mine} ({100 * mine_passed / max(mine, 1):.2f}%)", end="", flush=True)
        print(flush=True)
        ctx.print0("=" * 50)
    ctx.print0(f"Final: {passed}/{total} ({100 * passed / total:.2f}%)")
    return passed / total


def main():
    ctx = S.start("scripts/chat_eval.py")
    a = ctx.args
    ctx.qualifier = a.source
    ctx.compute_init(a.device_type)
    ctx.fail_point()
    IO.find_model(ctx, a.source, a.model_tag, a.step)
    all_tasks = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"] + (["SpellingBee"] if ctx.seed else [])
    tasks = all_tasks if a.task_name is None else a.task_name.split("|")
    results = {}
    for task in tasks:
        results[task] = run_task(ctx, task, a.max_problems)
        ctx.print0(f"{task} accuracy: {100 * results[task]:.2f}%")
    chatcore = {}
    if all(t in results for t in all_tasks):
        value = sum((acc - BASELINES[t]) / (1.0 - BASELINES[t]) for t, acc in results.items()) / len(results)
        chatcore = {"ChatCORE metric": value}
        if not ctx.seed:
            ctx.print0(f"ChatCORE metric: {value:.4f}")
    IO.report_log(ctx, "Chat evaluation " + a.source, [vars(a), results, chatcore])


if __name__ == "__main__":
    main()
