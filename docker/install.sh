#!/usr/bin/env bash
# Everything the image has, on a bare GPU host (what the SSH backend runs there); the Dockerfile runs the same
# steps one by one so that each gets its own cached layer. Settings: see env.sh. As root:
#
#     RUNNER_SRC=$PWD bash docker/install.sh
here="$(dirname "${BASH_SOURCE[0]}")"
set -euo pipefail
if [[ $(id -u) -eq 0 ]]; then
    bash "$here/install-system.sh"
fi
bash "$here/install-uv.sh"
bash "$here/install-nanochat.sh"
bash "$here/install-runner.sh"
