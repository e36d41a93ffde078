#!/usr/bin/env bash
# OS level (root): the few packages the other steps need, a non-root user, and the scratch and storage folders.
#
# Packages are installed only when missing, so a base image that already has them (the tests' Debian base,
# a prepared host) needs no package index. RUNNER_USER= (empty) skips the user, as on a host that has one.
#
#   RUNNER_USER  (runner)  RUNNER_UID  (1000)  SCRATCH_DIR  (/scratch)  STORAGE_DIR  (/storage)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

RUNNER_USER=${RUNNER_USER-runner}
RUNNER_UID=${RUNNER_UID:-1000}
SCRATCH_DIR=${SCRATCH_DIR:-/scratch}
STORAGE_DIR=${STORAGE_DIR:-/storage}

[[ $(id -u) -eq 0 ]] || die "install-system.sh must run as root." "Run it with sudo, or as root in the image build."

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and this system has no apt-get." "Install ${missing[*]} with the system's package manager, then run this again."
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    rm -rf /var/lib/apt/lists/*
fi

if [[ -n $RUNNER_USER ]] && ! id "$RUNNER_USER" >/dev/null 2>&1; then
    # Ubuntu-based CUDA images already have `ubuntu` at uid 1000; -o lets our name share the uid, so files in a
    # bind-mounted storage folder belong to the host's first user either way.
    log "creating user $RUNNER_USER (uid $RUNNER_UID)"
    useradd --create-home --shell /bin/bash --non-unique --uid "$RUNNER_UID" "$RUNNER_USER"
fi

# Sticky and world-writable: the local backend runs the container as the calling user's uid (so the files it
# writes into a bind-mounted storage folder are that user's), which need not be the image's user.
for dir in "$SCRATCH_DIR" "$STORAGE_DIR" /home/"${RUNNER_USER:-runner}"; do
    mkdir -p "$dir"
    chmod 1777 "$dir"
done
log "system ready"
