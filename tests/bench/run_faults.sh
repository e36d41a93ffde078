#!/usr/bin/env bash
# The fault benchmark (prints a table; not part of the test suite): bash tests/bench/run_faults.sh [--repeat 3]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tests/run.sh --co -q >/dev/null   # installs .venv (and collects the tests, nothing more)
PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m tests.bench.bench_faults "$@"
