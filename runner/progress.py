"""Reading nanochat's log lines: training progress (step, tok/s, MFU) and evaluation metrics.

Only the formats nanochat prints are matched, e.g. base_train's
`step 00123/21400 (0.57%) | loss: 3.21 | ... | tok/sec: 1,234,567 | mfu: 48.10 | total time: 3.21m`
(`bf16_mfu:` at the latest pin), mid_train's `step 00012 (40.00%) | ...` without a total, and seed chat_sft's
`Step 00003/00005 | Training loss: ...`. Note the lowercase `step` of the training lines: a wrapper that waits
for `Step 00001` waits forever.
"""

from __future__ import annotations

import re

STEP = re.compile(r"^(?:step (\d+)(?:/(\d+))? \(([0-9.]+)%\)|Step (\d+)/(\d+) \| Training loss)")
FIELD = {
    "loss": re.compile(r"\b(?:Training )?loss: ([0-9.]+)"),
    "tok_per_sec": re.compile(r"tok/sec: ([0-9,]+)"),
    "mfu": re.compile(r"\b(?:bf16_)?mfu: ([0-9.]+)"),
    "eta_min": re.compile(r"\beta: ([0-9.]+)m"),
}
METRICS = [
    (re.compile(r"Validation bpb: ([0-9.]+)"), "val_bpb"),
    (re.compile(r"Validation loss: ([0-9.]+)"), "val_loss"),
    (re.compile(r"^ChatCORE metric: ([0-9.]+)"), "chatcore"),
    (re.compile(r"\| ChatCORE: ([0-9.]+)"), "chatcore"),
    (re.compile(r"(?<!Chat)CORE metric: ([0-9.]+)"), "core"),
    (re.compile(r"^(train|val) bpb: ([0-9.]+)"), None),  # base_loss
    (re.compile(r"^([A-Za-z][\w-]*) accuracy: ([0-9.]+)%"), None),  # chat_eval, per task
]


def parse_line(line: str) -> tuple[dict, dict]:
    """(progress fields, metrics) found in one log line; both empty for ordinary output."""
    line = line.strip()
    progress: dict = {}
    match = STEP.match(line)
    if match:
        step, total, pct, cap_step, cap_total = match.groups()
        progress["step"] = int(step or cap_step)
        if total or cap_total:
            progress["total"] = int(total or cap_total)
        if pct:
            progress["percent"] = float(pct)
        for name, pattern in FIELD.items():
            found = pattern.search(line)
            if found:
                value = found.group(1).replace(",", "")
                progress[name] = int(value) if name == "tok_per_sec" else float(value)
    metrics: dict = {}
    for pattern, name in METRICS:
        found = pattern.search(line)
        if not found:
            continue
        if name is None:  # the metric is named by the line: "val bpb", "GSM8K accuracy"
            label, value = found.groups()
            suffix = "_bpb" if "bpb" in pattern.pattern else "_acc"
            metrics[label.lower().replace("-", "_") + suffix] = float(value) / (100 if suffix == "_acc" else 1)
        else:
            metrics.setdefault(name, float(found.group(1)))
    return progress, metrics
