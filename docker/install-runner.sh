#!/usr/bin/env bash
# The runner itself, in its own venv (never inside nanochat's: their dependencies must not constrain each other),
# with the `runner` command linked onto PATH. It uses the Python nanochat pins, so one interpreter serves both.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

[[ -f $RUNNER_SRC/pyproject.toml ]] || die "no runner source at $RUNNER_SRC." "Set RUNNER_SRC to the nanochat-runner checkout."
python=${RUNNER_PYTHON:-$(cat "$NANOCHAT_DIR/.python-version" 2>/dev/null || echo 3)}
log "runner venv at $RUNNER_VENV (python $python)"
uv venv --quiet --python "$python" "$RUNNER_VENV"
# A copy of the source, so a read-only or root-owned source tree never receives build/ or *.egg-info.
build=$(mktemp -d)
cp -a "$RUNNER_SRC"/. "$build"/
uv pip install --quiet --python "$RUNNER_VENV/bin/python" "$build"
rm -rf "$build" "$UV_CACHE_DIR"
mkdir -p "$RUNNER_BIN_DIR"
ln -sf "$RUNNER_VENV/bin/runner" "$RUNNER_BIN_DIR/runner"
"$RUNNER_BIN_DIR/runner" --version
