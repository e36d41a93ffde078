#!/usr/bin/env bash
# uv: from the wheelhouse when it carries a `uv` binary (offline builds), else the pinned release from astral.sh.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

target=$RUNNER_BIN_DIR/uv
if [[ -n $WHEELS && -f $WHEELS/uv ]]; then
    install -m 0755 "$WHEELS/uv" "$target"
elif [[ -n $WHEELS ]]; then
    die "the wheelhouse $WHEELS has no uv binary, and an offline install cannot download one." \
        "Copy a uv binary for this platform to $WHEELS/uv (e.g. from the PyPI wheel of uv $UV_VERSION)."
elif command -v uv >/dev/null 2>&1 && [[ $(uv --version) == "uv $UV_VERSION"* ]]; then
    log "uv $UV_VERSION is already installed"
    exit 0
else
    log "downloading uv $UV_VERSION"
    curl --proto '=https' --tlsv1.2 -fsSL --retry 5 "https://astral.sh/uv/$UV_VERSION/install.sh" -o /tmp/uv-install.sh
    env UV_INSTALL_DIR="$RUNNER_BIN_DIR" UV_NO_MODIFY_PATH=1 sh /tmp/uv-install.sh
    rm -f /tmp/uv-install.sh "$RUNNER_BIN_DIR/uvx"
fi
version=$("$target" --version)
log "$version at $target"
