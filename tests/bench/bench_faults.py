"""Fault benchmark: throw each fault at the runner N times with the nanochat test double and print, per fault,
whether the runner survived it, whether data in storage was lost, and how long it took to a clear error or to
recovery.

Prints a table; asserts nothing (targets: every row survived, nothing lost, a clear error within 2 minutes,
transfers stopped within 2 s of a signal). Run it with `bash tests/bench/run_faults.sh [--repeat 3] [--only NAME]`;
disk and permission faults need root (a tmpfs mount, chattr +i). Everything runs on 127.0.0.1: a SeaweedFS S3
server the script starts, local folders, and a socket server that accepts connections and never answers.

Add a fault by writing a function `scenario(lab) -> Outcome` in tests/bench/fault_scenarios.py and listing it in
`SCENARIOS` there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.bench.fault_scenarios import SCENARIOS, Lab, Outcome
from tests.infra.seaweedfs import SeaweedFS


def run_once(scenario, lab: Lab) -> Outcome:
    try:
        return scenario.run(lab)
    except Exception as e:  # noqa: BLE001 - a scenario that breaks is a row that did not survive, not a crash
        traceback.print_exc(file=sys.stderr)
        return Outcome(survived=False, data_lost=True, seconds=float("nan"), note=f"bench error: {type(e).__name__}: {e}"[:80])


def summarize(outcomes: list[Outcome]) -> tuple[str, str, str, str]:
    survived = sum(o.survived for o in outcomes)
    lost = sum(o.data_lost for o in outcomes)
    times = [o.seconds for o in outcomes if o.seconds == o.seconds]
    median = f"{statistics.median(times):.1f}" if times else "-"
    spread = f"{min(times):.1f}-{max(times):.1f}" if len(times) > 1 else median
    yes_no = lambda count: "yes" if count == len(outcomes) else ("no" if count == 0 else f"{count}/{len(outcomes)}")  # noqa: E731
    return yes_no(survived), yes_no(lost), f"{median} ({spread})", "; ".join(sorted({o.note for o in outcomes if o.note}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fault")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run only these faults (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--silent-budget", type=float, default=None,
                        help="RUNNER_STORAGE_TIMEOUT_SEC for the silent-endpoint fault (default: the runner's own)")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.list or not chosen:
        for s in SCENARIOS:
            print(f"{s.name:<28} issue row {s.row:<6} {s.what}")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        with SeaweedFS(work / "weed", s3_port=None) as server:
            lab = Lab(work, server, silent_budget=args.silent_budget)
            for scenario in chosen:
                outcomes = []
                for i in range(args.repeat):
                    started = time.monotonic()
                    outcome = run_once(scenario, lab.fresh(f"{scenario.name}-{i}"))
                    outcomes.append(outcome)
                    print(f"  {scenario.name} #{i + 1}: survived={outcome.survived} lost={outcome.data_lost} "
                          f"t={outcome.seconds:.1f}s ({time.monotonic() - started:.0f}s wall) {outcome.note}", file=sys.stderr, flush=True)
                rows.append((scenario, *summarize(outcomes)))
    print(f"\nfault benchmark: {args.repeat} run(s) each, nanochat test double, SeaweedFS on 127.0.0.1\n")
    print("| row | fault | survived | data lost | seconds to clear error / recovery: median (min-max) | measured |")
    print("|---|---|---|---|---|---|")
    for scenario, survived, lost, seconds, note in rows:
        print(f"| {scenario.row} | {scenario.what} | {survived} | {lost} | {seconds} | {scenario.measures}{'; ' + note if note else ''} |")


if __name__ == "__main__":
    main()
