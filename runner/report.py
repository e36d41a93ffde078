"""`runner report RUN`: one report for every recipe (upstream's `latest` has none), written into storage.

It reads the run back from storage (status, plan, logs), scrapes the evaluation metrics from the logs, plots
training loss, validation bpb and throughput against step (PNG, matplotlib), and writes
`_runner/runs/<run>/report/report.md` with the plots beside it; upstream's own report (`report/report.md`, at
pins that make one) is included at the end. `--html` renders the same content as one standalone page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time

from . import __version__
from .estimate import estimate_phases
from .live import dollars_so_far, newest_checkpoint, shown_state
from .plan import Plan
from .runlogs import load_run, phase_logs, step_metrics, training_series
from .status import run_dir
from .storage import Storage

CHAT_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]


def _plot(points_by_label: dict[str, list[tuple[int, float]]], ylabel: str, title: str) -> bytes | None:
    points_by_label = {k: v for k, v in points_by_label.items() if v}
    if not points_by_label:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for label, points in points_by_label.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(points_by_label) > 1:
        ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build(storage: Storage, run_id: str) -> tuple[str, dict[str, bytes], dict]:
    """(markdown, {png name: bytes}, data) for a run; `data` holds the numbers (tests and --json use it)."""
    status, plan_raw = load_run(storage, run_id)
    logs = phase_logs(storage, run_id)
    plan = Plan.from_dict(plan_raw) if plan_raw else None
    series = {f"{phase}/{step}": training_series(lines) for phase, steps in logs.items() for step, lines in steps.items()}
    series = {k: v for k, v in series.items() if v.loss or v.val_bpb}
    metrics = {f"{phase}/{step}": step_metrics(lines) for phase, steps in logs.items() for step, lines in steps.items()}
    metrics = {k: v for k, v in metrics.items() if v}
    plots = {
        "loss.png": _plot({k: v.loss for k, v in series.items()}, "training loss", "Training loss"),
        "val_bpb.png": _plot({k: v.val_bpb for k, v in series.items()}, "validation bpb", "Validation bits per byte"),
        "tok_per_sec.png": _plot({k: v.tok_per_sec for k, v in series.items()}, "tokens / second", "Throughput"),
    }
    plots = {k: v for k, v in plots.items() if v}
    versions = status.get("versions", {})
    out = [f"# nanochat run `{run_id}`", ""]
    out += [f"- state: **{shown_state(status)}** (attempts: {status.get('attempts', 1)})",
            f"- recipe `{status.get('recipe', '?')}`, nanochat `{str(status.get('commit', '?'))[:7]}`; model {status.get('model', '?')}; {status.get('gpus', '?')}× {status.get('gpu_type', '?')}",
            f"- versions: nanochat-runner {__version__}, torch {versions.get('torch', '?')}, triton {versions.get('triton', '?')}, GPU {versions.get('gpu', '?')}",
            f"- started {status.get('started_at')}, last update {status.get('updated_at')}", ""]
    if plan:
        shape = plan.shape
        size = ("a smoke run at tiny sizes (see the commands)" if plan.smoke else
                f"{shape['training_tokens']:,} training tokens, device batch {shape['device_batch_size']}")
        out += ["## Plan", "", f"depth {plan.depth}, {shape['params_total']:,} parameters, {plan.data['shards']} shards, {size}", ""]
        out += ["```"] + [f"{p.name:<10} {s.display()}" for p in plan.phases for s in p.steps] + ["```", ""]
    rows = []
    for name, info in status["phases"].items():
        info = info if isinstance(info, dict) else {}
        steps = info.get("steps", {})
        seconds = info.get("seconds") or sum(s.get("seconds", 0) for s in steps.values())
        rows.append([name, info.get("state", "?"), f"{seconds / 60:.1f}" if seconds else "", ", ".join(f"{k} {v.get('state')}" for k, v in steps.items())])
    out += ["## Phases", "", _table(["phase", "state", "minutes", "steps"], rows), ""]
    spent = dollars_so_far(status, plan.backend if plan else None)
    out += ["## Cost", "", f"Node time: {float(status.get('node_seconds', 0)) / 3600:.2f} h × {status.get('gpus', '?')} GPUs; "
            + ", ".join(f"{b}: ${d:,.2f}" for b, d in spent.items()) + " (prices per GPU-hour from runner/prices.toml)."]
    if plan:
        estimated = sum(e.hours for e in estimate_phases(plan))
        out += [f"The plan estimated {estimated:.2f} h."]
    out += [""]
    out += ["## Metrics", ""]
    rows = [[where, name, f"{value:.4f}"] for where, found in metrics.items() for name, value in sorted(found.items())]
    out += [_table(["step", "metric", "value"], rows) if rows else "No metrics were found in the logs.", ""]
    chat = {where.split("/")[1].removeprefix("chat_eval_"): found for where, found in metrics.items() if "chat_eval" in where}
    order = [p["name"] for p in (plan_raw or {}).get("phases", [])]  # pipeline order: the chat stages are phase names
    chat = {stage: chat[stage] for stage in sorted(chat, key=lambda s: order.index(s) if s in order else len(order))}
    if chat:
        keys = [t.lower().replace("-", "_") + "_acc" for t in CHAT_TASKS]
        out += ["### Chat evaluations", "", _table(["task", *chat], [[t, *(f"{chat[s][k]:.4f}" if k in chat[s] else "" for s in chat)] for t, k in zip(CHAT_TASKS, keys)]), ""]
    cache = status.get("compile_cache") or {}
    history = status.get("compile_cache_history", []) + ([cache] if cache else [])
    ckpt = newest_checkpoint(storage, plan_raw)
    out += ["## Resilience", "",
            "- compile cache: " + (", ".join(f"attempt {i + 1}: {c.get('restore', '?')}" for i, c in enumerate(history)) or "not used") + (f" (key `{cache.get('key')}`)" if cache else ""),
            "- resumes: " + (", ".join(f"{r['phase']}/{r['step']} from step {r['from']} at {r['at']}" for r in status.get("resumes", [])) or "none"),
            "- newest complete checkpoint: " + (f"step {ckpt['step']} of {ckpt['folder']}" if ckpt else "none"),
            f"- evaluation failures: {', '.join(status.get('eval_failures', [])) or 'none'}",
            f"- skipped: {', '.join(status.get('skipped', [])) or 'none'}", ""]
    if plots:
        out += ["## Training curves", ""] + [f"![{name}]({name})" for name in plots] + [""]
    if storage.exists("report/report.md"):
        upstream = storage.read_text("report/report.md")
        out += ["## nanochat's own report", "", upstream.replace("\n# ", "\n### ").replace("\n## ", "\n### "), ""]
    out += [f"_Written by nanochat-runner {__version__} at {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}._", ""]
    data = {"metrics": metrics, "series": {k: {"loss": len(v.loss), "val_bpb": len(v.val_bpb), "tok_per_sec": len(v.tok_per_sec)} for k, v in series.items()},
            "plots": sorted(plots), "dollars": spent}
    return "\n".join(out), plots, data


def write(storage: Storage, run_id: str, as_html: bool = False) -> tuple[str, dict]:
    """Write the report (and plots) into storage; returns the report's URL and the data behind it."""
    markdown, plots, data = build(storage, run_id)
    folder = f"{run_dir(run_id)}/report"
    for name, png in plots.items():
        storage.write_bytes(f"{folder}/{name}", png)
    storage.write_text(f"{folder}/report.md", markdown)
    target = f"{folder}/report.md"
    if as_html:
        storage.write_text(f"{folder}/report.html", to_html(markdown, plots, run_id))
        target = f"{folder}/report.html"
    storage.write_text(f"{folder}/report.json", json.dumps(data, indent=2))
    return storage.url_of(target), data


def to_html(markdown_text: str, plots: dict[str, bytes], title: str) -> str:
    """A standalone page: the markdown rendered, the PNGs inlined as data URIs."""
    import markdown

    for name, png in plots.items():
        markdown_text = markdown_text.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(png).decode()})")
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
             "pre{background:#f5f5f5;padding:.75rem;overflow-x:auto}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{body}</body></html>"
