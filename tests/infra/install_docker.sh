#!/usr/bin/env bash
# What the Docker tests need from Debian, installed once (tests/run.sh calls this; a second run does nothing):
# dockerd (docker.io: the tests start their own engines, see tests/infra/docker_engine.py) and debootstrap (the
# tests' base image, see tests/infra/image.py). Compose v2 and hadolint come from PyPI with the test extra.
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[tests/run.sh] notice: ${missing[*]} missing and this is not a root Debian shell, so the Docker tests will fail;" \
        "install them (sudo apt-get install ${missing[*]}) and run this again" >&2
    exit 0
fi
echo "[tests/run.sh] installing ${missing[*]} (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service scripts may try to start a system engine; the tests never use one.
apt-get install -y -qq --no-install-recommends "${missing[@]}" iproute2 >/dev/null
