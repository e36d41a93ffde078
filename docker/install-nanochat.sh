#!/usr/bin/env bash
# nanochat at a pinned commit, with the venv its own lock describes.
#
# 1. Source: cloned from NANOCHAT_REPO at NANOCHAT_REF, or copied from NANOCHAT_FROM (offline builds, forks, the
#    tests' double). A copy without .git gets the commit written into .nanochat-commit, which the node agent reads.
# 2. venv: `uv sync --extra $NANOCHAT_EXTRA --frozen`: torch for CUDA 12.8 (gpu) or the CPU build (cpu) and the rest
#    exactly as uv.lock pins them, with the Python of .python-version. A checkout without uv.lock installs its
#    requirements.txt instead.
# 3. Rust BPE tokenizer: the `rustbpe` wheel the lock pins; only a pin that carries rustbpe/ as source (older
#    nanochat) is built with maturin, and only then is a Rust toolchain installed (and removed again).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# -- 1. source --------------------------------------------------------------------------------------------------
if [[ -e $NANOCHAT_DIR && -n $(ls -A "$NANOCHAT_DIR" 2>/dev/null) ]]; then
    die "$NANOCHAT_DIR already exists and is not empty." "Remove it, or set NANOCHAT_DIR to another folder."
fi
mkdir -p "$NANOCHAT_DIR"
if [[ -n $NANOCHAT_FROM ]]; then
    [[ -d $NANOCHAT_FROM/nanochat && -d $NANOCHAT_FROM/scripts ]] ||
        die "$NANOCHAT_FROM is not a nanochat checkout (no nanochat/ and scripts/ folders)." \
            "Point NANOCHAT_SRC (build arg) or NANOCHAT_FROM at the root of a nanochat checkout."
    log "copying nanochat from $NANOCHAT_FROM"
    cp -a "$NANOCHAT_FROM"/. "$NANOCHAT_DIR"/
    rm -rf "$NANOCHAT_DIR/.venv"
    if [[ -d $NANOCHAT_DIR/.git ]]; then
        head=$(git -C "$NANOCHAT_DIR" rev-parse HEAD)
        [[ $head == "$NANOCHAT_REF"* ]] ||
            die "the copied checkout is at $head, not at NANOCHAT_REF=$NANOCHAT_REF." \
                "git -C $NANOCHAT_FROM checkout $NANOCHAT_REF" "or build with --build-arg NANOCHAT_REF=$head (and the recipe for it)."
    elif [[ -f $NANOCHAT_DIR/.nanochat-commit ]]; then
        recorded=$(tr -d '[:space:]' <"$NANOCHAT_DIR/.nanochat-commit")
        [[ $recorded == "$NANOCHAT_REF"* || $NANOCHAT_REF == "$recorded"* ]] ||
            die "the copied checkout says it is commit $recorded (.nanochat-commit), not NANOCHAT_REF=$NANOCHAT_REF." \
                "Build with --build-arg NANOCHAT_REF=$recorded, or copy the checkout of $NANOCHAT_REF."
    else
        echo "$NANOCHAT_REF" >"$NANOCHAT_DIR/.nanochat-commit"
    fi
else
    log "cloning $NANOCHAT_REPO at $NANOCHAT_REF"
    git clone --quiet --filter=blob:none "$NANOCHAT_REPO" "$NANOCHAT_DIR"
    git -C "$NANOCHAT_DIR" -c advice.detachedHead=false checkout --quiet "$NANOCHAT_REF"
fi
cd "$NANOCHAT_DIR"

# -- 2. venv ----------------------------------------------------------------------------------------------------
if [[ -f uv.lock ]]; then
    log "uv sync --extra $NANOCHAT_EXTRA --frozen (python $(cat .python-version 2>/dev/null || echo 'from pyproject'))"
    uv sync --extra "$NANOCHAT_EXTRA" --frozen
elif [[ -f requirements.txt ]]; then
    log "no uv.lock: installing requirements.txt into .venv"
    uv venv --quiet --python "${NANOCHAT_PYTHON:-3}" .venv
    uv pip install --quiet --python .venv/bin/python -r requirements.txt
else
    die "$NANOCHAT_DIR has neither uv.lock nor requirements.txt, so its dependencies are unknown." \
        "Use a nanochat commit that has uv.lock (every upstream commit since October 2025 does)."
fi

# -- 3. Rust BPE ------------------------------------------------------------------------------------------------
if [[ -f rustbpe/Cargo.toml ]] && ! .venv/bin/python -c 'import rustbpe' 2>/dev/null; then
    log "this pin builds rustbpe from source: installing a Rust toolchain for the build"
    export RUSTUP_HOME=/tmp/rustup CARGO_HOME=/tmp/cargo
    curl --proto '=https' --tlsv1.2 -fsSL --retry 5 https://sh.rustup.rs -o /tmp/rustup-init.sh
    sh /tmp/rustup-init.sh -y --profile minimal --no-modify-path
    PATH=$CARGO_HOME/bin:$PATH uv run --no-sync maturin develop --release --manifest-path rustbpe/Cargo.toml
    rm -rf /tmp/rustup /tmp/cargo /tmp/rustup-init.sh rustbpe/target
fi
if grep -qs '^name = "rustbpe"' uv.lock || [[ -f rustbpe/Cargo.toml ]]; then
    .venv/bin/python -c 'import rustbpe' || die "rustbpe does not import in $NANOCHAT_DIR/.venv." "Check the build output above."
    log "rustbpe imports"
fi

# Precompiled bytecode: at run time the checkout may be read-only for the user the container runs as.
.venv/bin/python -m compileall -q -x '/\.venv/' . >/dev/null || true
# The report step copies report.md into the working directory (the checkout), whatever the container's uid. A
# checkout in a user's own cache (the runner provisioning it) stays the user's.
if [[ $NANOCHAT_OPEN_TO_ALL == 1 ]]; then chmod 1777 "$NANOCHAT_DIR"; fi
rm -rf "$UV_CACHE_DIR"
log "nanochat $(cat .nanochat-commit 2>/dev/null || git rev-parse --short HEAD) ready at $NANOCHAT_DIR"
