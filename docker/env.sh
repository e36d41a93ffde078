# Shared settings of the install scripts in docker/ (sourced, not run). They install the same things into the
# image (Dockerfile) and onto a bare GPU host (the SSH backend runs docker/install.sh there), so every path is a
# variable with the image's value as its default.
#
#   NANOCHAT_DIR      where the nanochat checkout and its .venv go            (/opt/nanochat)
#   NANOCHAT_REF      the commit to check out: the `seed` recipe's pin          (a1ccb3d...)
#   NANOCHAT_REPO     where to clone it from
#   NANOCHAT_FROM     a local folder to copy nanochat from instead of cloning (empty: clone)
#   NANOCHAT_EXTRA    nanochat's torch extra: gpu (CUDA 12.8) or cpu                        (gpu)
#   NANOCHAT_OPEN_TO_ALL  1: the checkout is writable by every uid (the image runs as the caller's uid)  (1)
#   RUNNER_SRC        the runner's source (pyproject.toml, runner/, backends/)
#   RUNNER_VENV       the runner's own venv                                     (/opt/runner)
#   RUNNER_BIN_DIR    where the `runner` command is linked                      (/usr/local/bin)
#   WHEELS            a local folder of wheels (and a `uv` binary): install offline from it (empty: the network)
#   UV_VERSION        the uv release to install when WHEELS has none
set -euo pipefail

NANOCHAT_DIR=${NANOCHAT_DIR:-/opt/nanochat}
NANOCHAT_REF=${NANOCHAT_REF:-a1ccb3dc0b7095620751498b8652a6d6647d8c01}
NANOCHAT_REPO=${NANOCHAT_REPO:-https://github.com/karpathy/nanochat.git}
NANOCHAT_FROM=${NANOCHAT_FROM:-}
NANOCHAT_EXTRA=${NANOCHAT_EXTRA:-gpu}
NANOCHAT_OPEN_TO_ALL=${NANOCHAT_OPEN_TO_ALL:-1}
RUNNER_SRC=${RUNNER_SRC:-/opt/build/runner}
RUNNER_VENV=${RUNNER_VENV:-/opt/runner}
RUNNER_BIN_DIR=${RUNNER_BIN_DIR:-/usr/local/bin}
WHEELS=${WHEELS:-}
UV_VERSION=${UV_VERSION:-0.13.8}

# uv installs Python (nanochat pins 3.10) where every user can read it, not under root's home, and copies files
# out of its cache instead of hard-linking them (the cache is deleted at the end of each step).
export UV_PYTHON_INSTALL_DIR=${UV_PYTHON_INSTALL_DIR:-/opt/uv/python}
export UV_LINK_MODE=copy
export UV_COMPILE_BYTECODE=1
export UV_CACHE_DIR=${INSTALL_UV_CACHE_DIR:-/tmp/uv-install-cache}

# Offline installs: a wheelhouse is the only package source, and only a Python already on the machine is used.
if [[ -n $WHEELS ]]; then
    export UV_OFFLINE=1 UV_NO_INDEX=1 UV_FIND_LINKS=$WHEELS UV_PYTHON_DOWNLOADS=never
fi

log() { printf '[install] %s\n' "$*" >&2; }
die() {
    printf '[install] error: %s\n' "$1" >&2
    shift
    if (($#)); then
        printf '[install] To fix:\n' >&2
        local i=1
        for step in "$@"; do
            printf '[install]   %d. %s\n' "$i" "$step" >&2
            i=$((i + 1))
        done
    fi
    exit 1
}
