"""Every fault the benchmark throws, in table order. Add a row: write `scenario(lab) -> Outcome` (fault_lab.py has
the helpers) and list it here."""

from __future__ import annotations

from tests.bench.fault_lab import Lab, Outcome, Scenario  # noqa: F401 - re-exported for bench_faults
from tests.bench.fault_node import SCENARIOS as NODE
from tests.bench.fault_records import SCENARIOS as RECORDS
from tests.bench.fault_storage import SCENARIOS as STORAGE
from tests.bench.fault_training import SCENARIOS as TRAINING

SCENARIOS: list[Scenario] = sorted([*STORAGE, *RECORDS, *NODE], key=lambda s: int(s.row)) + TRAINING

__all__ = ["Lab", "Outcome", "SCENARIOS", "Scenario"]
