#!/usr/bin/env bash
# Venvs with only `modal` (no nanochat-runner) on other Pythons, for the test that the deployable Modal app module
# imports on whatever Python a user's laptop has (tests/test_modal_app.py). One venv per version found on this
# machine (pythonX.Y on PATH, or pyenv's), with the modal version of the project's own venv; versions not found
# are named and their tests skip. Idempotent: an existing venv with that modal version is kept.
#
#     bash tests/infra/make_modal_pythons.sh PROJECT_PYTHON
set -euo pipefail

project_python=$1
where=${RUNNER_MODAL_TEST_PYTHONS:-$HOME/.cache/nanochat-runner-test}
log() { printf '[modal pythons] %s\n' "$*" >&2; }

modal_version=$("$project_python" -c 'import modal; print(modal.__version__)' 2>/dev/null) || {
    log "the project venv has no modal; skipping"
    exit 0
}
if uv --version >/dev/null 2>&1; then UV=(uv); else UV=("$project_python" -m uv); fi

find_python() { # an interpreter of version $1 that runs (pyenv's shims exist for versions they will not start)
    local v=$1 candidate
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python 2>/dev/null | sort -V -r) \
        $(command -v "python$v" 2>/dev/null); do
        if "$candidate" -c 'import sys' >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
}

for version in 3.10 3.11 3.13; do
    venv=$where/modal-py$version
    if [[ -x $venv/bin/python ]] && [[ $("$venv/bin/python" -c 'import modal; print(modal.__version__)' 2>/dev/null) == "$modal_version" ]]; then
        continue
    fi
    interpreter=$(find_python "$version")
    if [[ -z $interpreter ]]; then
        log "no Python $version here: its import test will be skipped"
        continue
    fi
    log "making $venv (modal==$modal_version on $interpreter)"
    rm -rf "$venv"
    if ! { "${UV[@]}" venv --quiet --python "$interpreter" --no-python-downloads "$venv" &&
        "${UV[@]}" pip install --quiet --python "$venv/bin/python" "modal==$modal_version"; }; then
        log "could not make $venv: its import test will be skipped"
        rm -rf "$venv"
    fi
done
