#!/usr/bin/env bash
# What the SSH backend tests need from Debian, installed once (tests/run.sh calls this; a second run does nothing):
# OpenSSH's server (tests/infra/sshd.py starts its own sshd on 127.0.0.1, never the system's service).
set -euo pipefail

if command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[tests/run.sh] notice: sshd is missing and this is not a root Debian shell, so the SSH backend tests will" \
        "be skipped; install it (sudo apt-get install openssh-server) and run this again" >&2
    exit 0
fi
echo "[tests/run.sh] installing openssh-server (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends openssh-server >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
fi
# The package enables and may start the system's sshd on port 22; the tests never use it.
