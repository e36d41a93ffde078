"""TEST DOUBLE of nanochat's nanochat/report.py (seed only: `python -m nanochat.report reset|generate`).

reset: deletes the known section files and report/report.md, writes report/header.md (git lines
read `unknown` unless the cwd has a .git, as upstream's `git rev-parse` would; then the pinned
commit is shown) ending with `Run started: <timestamp>`.
generate: concatenates header + sections in upstream's order into report/report.md (warning about
missing ones), appends the Summary table, and copies report.md into the current directory.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

EXPECTED_FILES = [
    "tokenizer-training.md", "tokenizer-evaluation.md", "base-model-training.md", "base-model-loss.md",
    "base-model-evaluation.md", "midtraining.md", "chat-evaluation-mid.md", "chat-sft.md",
    "chat-evaluation-sft.md", "chat-rl.md", "chat-evaluation-rl.md",
]
CHAT_METRICS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE"]
STAMP = "%Y-%m-%d %H:%M:%S"


def header(ctx):
    in_git = os.path.exists(".git")
    commit = f"{ctx.pin['commit'][:7]} (clean)" if in_git else "unknown (clean)"
    return (f"# nanochat training report\n\nGenerated: {datetime.datetime.now().strftime(STAMP)}\n\n"
            f"## Environment\n\n### Git Information\n- Branch: {'master' if in_git else 'unknown'}\n"
            f"- Commit: {commit}\n- Message: {'(nanochat test double)' if in_git else ''}\n\n"
            f"### Hardware\n- Platform: {platform.system()}\n- CPUs: {os.cpu_count()} cores ({os.cpu_count()} logical)\n"
            f"- Memory: 128.0 GB\n- GPUs: None available\n\n### Software\n- Python: {platform.python_version()}\n"
            f"- PyTorch: (not imported by the test double)\n\n\n### Bloat\n- Characters: 0\n- Lines: 0\n- Files: 0\n"
            f"- Tokens (approx): 0\n- Dependencies (uv.lock lines): 0\n\n")


def extract(section, keys):
    out = {}
    for line in section.split("\n"):
        for key in keys:
            if key in line:
                out[key] = line.split(":")[1].strip()
    return out


def timestamp(content, prefix):
    for line in content.split("\n"):
        if line.startswith(prefix):
            try:
                return datetime.datetime.strptime(line.split(":", 1)[1].strip(), STAMP)
            except ValueError:
                pass
    return None


def reset(ctx, report_dir):
    for name in EXPECTED_FILES + ["report.md"]:
        path = os.path.join(report_dir, name)
        if os.path.exists(path):
            os.remove(path)
    header_file = os.path.join(report_dir, "header.md")
    with open(header_file, "w", encoding="utf-8") as f:
        f.write(header(ctx))
        f.write(f"Run started: {datetime.datetime.now().strftime(STAMP)}\n\n---\n\n")
    print(f"Reset report and wrote header to {header_file}", flush=True)


def generate(ctx, report_dir):
    report_file = os.path.join(report_dir, "report.md")
    print(f"Generating report to {report_file}", flush=True)
    ctx.maybe_hang()
    metrics, start, end, bloat = {}, None, None, "[bloat data missing]"
    with open(report_file, "w", encoding="utf-8") as out:
        header_file = os.path.join(report_dir, "header.md")
        if os.path.exists(header_file):
            with open(header_file, encoding="utf-8") as f:
                content = f.read()
            out.write(content)
            start = timestamp(content, "Run started:")
            found = re.search(r"### Bloat\n(.*?)\n\n", content, re.DOTALL)
            bloat = found.group(1) if found else ""
        else:
            print(f"Warning: {header_file} does not exist. Did you forget to run `nanochat reset`?", flush=True)
        for name in EXPECTED_FILES:
            path = os.path.join(report_dir, name)
            if not os.path.exists(path):
                print(f"Warning: {path} does not exist, skipping", flush=True)
                continue
            with open(path, encoding="utf-8") as f:
                section = f.read()
            if "rl" not in name:
                end = timestamp(section, "timestamp:")
            stage = {"base-model-evaluation.md": ("base", ["CORE"]), "chat-evaluation-mid.md": ("mid", CHAT_METRICS),
                     "chat-evaluation-sft.md": ("sft", CHAT_METRICS), "chat-evaluation-rl.md": ("rl", ["GSM8K"])}.get(name)
            if stage:
                metrics[stage[0]] = extract(section, stage[1])
            out.write(section + "\n")
        out.write("## Summary\n\n" + bloat + "\n\n")
        names = sorted({k for m in metrics.values() for k in m}, key=lambda x: (x != "CORE", x == "ChatCORE", x))
        stages = ["base", "mid", "sft", "rl"]
        out.write(f"| {'Metric'.ljust(15)} |" + "".join(f" {s.upper().ljust(8)} |" for s in stages) + "\n")
        out.write(f"|{'-' * 17}|" + "".join(f"{'-' * 10}|" for _ in stages) + "\n")
        for name in names:
            out.write(f"| {name.ljust(15)} |" + "".join(f" {str(metrics.get(s, {}).get(name, '-')).ljust(8)} |"
                                                      for s in stages) + "\n")
        out.write("\n")
        if start and end:
            seconds = int((end - start).total_seconds())
            out.write(f"Total wall clock time: {seconds // 3600}h{(seconds % 3600) // 60}m\n")
        else:
            out.write("Total wall clock time: unknown\n")
    print("Copying report.md to current directory for convenience", flush=True)
    shutil.copy(report_file, "report.md")


def main():
    parser = argparse.ArgumentParser(description="Generate or reset nanochat training reports.")
    parser.add_argument("command", nargs="?", default="generate", choices=["generate", "reset"])
    ctx = S.start("nanochat/report.py", parser=parser)
    ctx.qualifier = ctx.args.command
    ctx.fail_point()
    if not ctx.master:
        return  # get_report() hands non-zero ranks a DummyReport
    report_dir = os.path.join(IO.base_dir(), "report")
    os.makedirs(report_dir, exist_ok=True)
    (generate if ctx.args.command == "generate" else reset)(ctx, report_dir)
    ctx.maybe_hang()


if __name__ == "__main__":
    main()
