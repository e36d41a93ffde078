#!/usr/bin/env bash
# Debian's Chromium, for the test that loads the chat web UI in a headless browser (tests/test_chat.py).
# tests/run.sh calls this; a second run does nothing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[tests/run.sh] notice: chromium is missing and this is not a root Debian shell, so the web UI test will fail;" \
        "install it (sudo apt-get install chromium) and run this again" >&2
    exit 0
fi
echo "[tests/run.sh] installing chromium (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
