"""Reading nanochat's log lines: training progress (step, tok/s, MFU) and evaluation metrics.

Only the formats nanochat prints are matched, e.g. base_train's
`step 00123/21400 (0.57%) | loss: 3.21 | ... | tok/sec: 1,234,567 | mfu: 48.10 | total time: 3.21m`.
Note the lowercase `step`: a wrapper that waits for `Step 00001` waits forever.
"""

from __future__ import annotations

import re

STEP = re.compile(r"^step (\d+)/(\d+)")
FIELD = {
    "loss": re.compile(r"\bloss: ([0-9.]+)"),
    "tok_per_sec": re.compile(r"tok/sec: ([0-9,]+)"),
    "mfu": re.compile(r"\bmfu: ([0-9.]+)"),
}
METRICS = {
    "val_bpb": re.compile(r"Validation bpb: ([0-9.]+)"),
    "core": re.compile(r"CORE metric: ([0-9.]+)"),
}


def parse_line(line: str) -> tuple[dict, dict]:
    """(progress fields, metrics) found in one log line; both empty for ordinary output."""
    progress: dict = {}
    match = STEP.match(line.strip())
    if match:
        progress["step"], progress["total"] = int(match.group(1)), int(match.group(2))
        for name, pattern in FIELD.items():
            found = pattern.search(line)
            if found:
                value = found.group(1).replace(",", "")
                progress[name] = float(value) if name != "tok_per_sec" else int(float(value))
    metrics = {name: float(m.group(1)) for name, pattern in METRICS.items() if (m := pattern.search(line))}
    return progress, metrics
