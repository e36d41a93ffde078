"""The bash the SSH backend sends to a host to start, find, watch and stop one run; nothing here connects.

A run lives in `~/.nanochat-runner/runs/<run id>/` on the host: `run.sh` (the command; no secrets), `meta.json`,
`plan.json`, `wrapper.pid`, `output.log`, and `exit_code` once it ended. `run.sh` is started with `setsid nohup`:
its own session, stdin from /dev/null, output to the log, so neither a dropped SSH link nor a closed laptop
reaches it. It runs the node agent in the foreground and writes the exit code when it ends.

Credentials never touch a command line or a file: the launch script, which carries them as `export` lines, goes
to `bash -s` through stdin, and the run inherits them. In docker mode they go on into the container through the
`docker run -i` client's stdin (as base64 lines the container's shell turns back into variables before it execs
the runner), because `docker run -e` would store them in the container's config file on the host.
"""

from __future__ import annotations

import base64
import json
import shlex

from .ssh_conn import q

RUNS = "$HOME/.nanochat-runner/runs"

# Inside the container: read NAME=base64(value) lines from stdin, export them, then become the runner.
CONTAINER_ENV_READER = (
    'while IFS= read -r l && [ -n "$l" ]; do export "${l%%=*}=$(printf %s "${l#*=}" | base64 -d)"; done; '
    'exec runner "$@" </dev/null'
)


def run_dir(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


def run_sh(run_id: str, mode: str, argv: list[str], secret_names: list[str] = ()) -> str:
    """The run's wrapper script. bare: `argv` is the node agent's command. docker: `argv` is `docker run ...`
    up to the image's arguments, and the node's environment (`secret_names`) is piped into it."""
    lines = [
        "#!/usr/bin/env bash",
        f"# nanochat-runner: run {run_id} ({mode} mode), started detached by `runner up --backend ssh`.",
        "# The node agent runs in the foreground; its exit code goes to exit_code when it ends.",
        'cd "$(dirname "$0")"',
    ]
    if mode == "docker":
        names = " ".join(secret_names)
        unset = " ".join(f"-u {n}" for n in secret_names)
        lines += [
            "set -o pipefail",
            f"names=({names})",
            # printenv gets a name only; the value goes through pipes (never an argument of any process).
            '{ for n in "${names[@]}"; do printf \'%s=%s\\n\' "$n" "$(printenv "$n" | base64 -w0)"; done; } \\',
            f"  | env {unset} {shlex.join(argv)}",
        ]
    else:
        lines.append(shlex.join(argv))
    lines += ["code=$?", 'echo "$code" > exit_code.tmp && mv exit_code.tmp exit_code', 'exit "$code"']
    return "\n".join(lines) + "\n"


def launch_script(run_id: str, files: dict[str, str], env: dict[str, str]) -> str:
    """Make the run folder (an earlier, finished attempt's is replaced), write its files, start run.sh detached."""
    d = run_dir(run_id)
    lines = ["set -euo pipefail", f'd="{d}"', 'rm -rf "$d"', 'mkdir -p "$d"']
    for name, text in files.items():
        lines.append(f"printf %s {q(base64.b64encode(text.encode()).decode())} | base64 -d > \"$d/{name}\"")
    lines += [f"export {name}={q(value)}" for name, value in env.items()]
    lines += [
        'cd "$d"',
        'setsid nohup bash "$d/run.sh" </dev/null >>"$d/output.log" 2>&1 &',
        'echo $! > "$d/wrapper.pid"',
        'echo "pid=$!"',
    ]
    return "\n".join(lines) + "\n"


def _alive(d: str) -> str:
    """Bash: set `alive` to 1 when the run's wrapper runs (its pid, checked against its command line)."""
    return (
        f'd="{d}"; pid=$(cat "$d/wrapper.pid" 2>/dev/null || true); alive=0\n'
        'if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && tr "\\0" " " </proc/"$pid"/cmdline 2>/dev/null | grep -qF "$d/run.sh"; then alive=1; fi\n'
    )


def describe_script(run_id: str) -> str:
    return _alive(run_dir(run_id)) + "\n".join([
        '[[ -d $d ]] || { echo "missing=1"; exit 0; }',
        'echo "meta=$(tr -d "\\n" < "$d/meta.json" 2>/dev/null)"',
        'echo "alive=$alive"; echo "pid=$pid"',
        'if [[ -f $d/exit_code ]]; then echo "exit=$(cat "$d/exit_code")"; echo "finished=$(date -u -r "$d/exit_code" +%Y-%m-%dT%H:%M:%S)"; fi',
        '[[ -f $d/cancelled ]] && echo "cancelled=1"',
        "true",
    ]) + "\n"


def list_script() -> str:
    return f'for d in "{RUNS}"/*/; do [[ -f $d/meta.json ]] && basename "$d"; done; true\n'


def logs_command(run_id: str, follow: bool, tail: int | None) -> str:
    d = run_dir(run_id)
    lines = f"-n {int(tail)}" if tail is not None else "-n +1"
    if not follow:
        return f'tail {lines} "{d}/output.log"'
    # --pid: tail ends a moment after the run's wrapper does, having printed everything.
    return f'exec tail {lines} -F --pid="$(cat "{d}/wrapper.pid")" "{d}/output.log" 2>/dev/null'


def cancel_script(run_id: str, mode: str, container: str, grace_sec: float) -> str:
    """SIGTERM to the node agent (docker: `docker stop`), --grace seconds to stop its phase, then SIGKILL to
    everything left in the run's session, so no process of the run outlives `runner down`."""
    grace = max(1, int(grace_sec))
    stop = (f"docker stop -t {grace} {q(container)} >/dev/null 2>&1 || true" if mode == "docker"
            else 'pkill -TERM -P "$pid" || true')
    return _alive(run_dir(run_id)) + "\n".join([
        '[[ -d $d ]] || { echo "missing=1"; exit 0; }',
        'if [[ $alive == 1 ]]; then',
        '  touch "$d/cancelled"',
        f"  {stop}",
        f"  for _ in $(seq {grace * 5 + 25}); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.2; done",
        '  pkill -KILL -s "$pid" 2>/dev/null || true',  # setsid made the wrapper's pid the session id
        '  [[ -f $d/exit_code ]] || echo 137 > "$d/exit_code"',
        "fi",
        f"docker rm -f {q(container)} >/dev/null 2>&1 || true" if mode == "docker" else "true",
        'echo "exit=$(cat "$d/exit_code" 2>/dev/null)"',
        '[[ -f $d/cancelled ]] && echo "cancelled=1"',
        'echo "meta=$(tr -d "\\n" < "$d/meta.json" 2>/dev/null)"',
        'rm -rf "$d"',
    ]) + "\n"


def parse_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    return out


def meta_json(**fields) -> str:
    return json.dumps(fields, sort_keys=True) + "\n"
