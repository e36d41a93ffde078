#!/usr/bin/env bash
# What the Slurm backend tests need from Debian, installed once (tests/run.sh calls this; a second run does nothing):
# munge, slurmctld, slurmd and the client commands (Debian 12: Slurm 22.05). tests/infra/slurm.py starts its own
# munged, slurmctld and two slurmd on 127.0.0.1 with a generated slurm.conf, never the system's services.
# Never slurm-wlm-emulator: it switches the slurmd/slurmctld alternatives to a front-end build.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
if have munged && have slurmctld && have slurmd && have sbatch; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[tests/run.sh] notice: Slurm is missing and this is not a root Debian shell, so the Slurm backend tests will" \
        "be skipped; install it (sudo apt-get install munge slurmctld slurmd slurm-client) and run this again" >&2
    exit 0
fi
echo "[tests/run.sh] installing munge, slurmctld, slurmd and slurm-client (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
packages=(munge slurmctld slurmd slurm-client)
if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
# The packages may start the system's munged/slurmd where an init system runs; the tests use their own daemons.
