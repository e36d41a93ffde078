"""Detached runs in a run folder: the bash that starts, finds, watches and stops one run, and the reading of what
it prints. The SSH backend sends it to a host; the `here` backend runs it on this machine. Nothing here connects:
a `shell` is anything with `script(text, timeout) -> (exit code, output)` and `stream(command) -> lines`.

A run lives in `<runs root>/<run id>/`: `run.sh` (the command; no secrets), `meta.json`, `plan.json`,
`wrapper.pid`, `output.log`, and `exit_code` once it ended. `run.sh` is started with `setsid nohup`: its own
session, stdin from /dev/null, output to the log, so neither a dropped SSH link, a closed terminal nor a closed
laptop reaches it. It runs the node agent in the foreground and writes the exit code when it ends.

Credentials never touch a command line or a file: the launch script, which carries them as `export` lines, goes
to `bash -s` through stdin, and the run inherits them. In docker mode they go on into the container through the
`docker run -i` client's stdin (as base64 lines the container's shell turns back into variables before it execs
the runner), because `docker run -e` would store them in the container's config file on the host.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from typing import Iterator

from .base import BackendError, RunInfo, State, state_from_exit



def q(text: str) -> str:
    return shlex.quote(str(text))


# Inside the container: read NAME=base64(value) lines from stdin, export them, then become the runner.
CONTAINER_ENV_READER = (
    'while IFS= read -r l && [ -n "$l" ]; do export "${l%%=*}=$(printf %s "${l#*=}" | base64 -d)"; done; '
    'exec runner "$@" </dev/null'
)


def _alive(d: str) -> str:
    """Bash: set `alive` to 1 when the run's wrapper runs (its pid, checked against its command line)."""
    return (
        f'd="{d}"; pid=$(cat "$d/wrapper.pid" 2>/dev/null || true); alive=0\n'
        'if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && tr "\\0" " " </proc/"$pid"/cmdline 2>/dev/null | grep -qF "$d/run.sh"; then alive=1; fi\n'
    )


@dataclass(frozen=True)
class RunFolder:
    """The runs under one root folder (a bash expression, e.g. "$HOME/.nanochat-runner/runs")."""

    root: str

    def run_dir(self, run_id: str) -> str:
        return f"{self.root}/{run_id}"

    def run_sh(self, run_id: str, mode: str, argv: list[str], secret_names: list[str] = ()) -> str:
        """The run's wrapper script. bare: `argv` is the node agent's command. docker: `argv` is `docker run ...`
        up to the image's arguments, and the node's environment (`secret_names`) is piped into it."""
        lines = [
            "#!/usr/bin/env bash",
            f"# nanochat-runner: run {run_id} ({mode} mode), started detached by `runner up`.",
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

    def launch_script(self, run_id: str, files: dict[str, str], env: dict[str, str]) -> str:
        """Make the run folder (an earlier, finished attempt's is replaced), write its files, start run.sh detached."""
        d = self.run_dir(run_id)
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



    def describe_script(self, run_id: str) -> str:
        return _alive(self.run_dir(run_id)) + "\n".join([
            '[[ -d $d ]] || { echo "missing=1"; exit 0; }',
            'echo "meta=$(tr -d "\\n" < "$d/meta.json" 2>/dev/null)"',
            'echo "alive=$alive"; echo "pid=$pid"',
            'if [[ -f $d/exit_code ]]; then echo "exit=$(cat "$d/exit_code")"; echo "finished=$(date -u -r "$d/exit_code" +%Y-%m-%dT%H:%M:%S)"; fi',
            '[[ -f $d/cancelled ]] && echo "cancelled=1"',
            "true",
        ]) + "\n"


    def list_script(self) -> str:
        return f'for d in "{self.root}"/*/; do [[ -f $d/meta.json ]] && basename "$d"; done; true\n'


    def logs_command(self, run_id: str, follow: bool, tail: int | None) -> str:
        d = self.run_dir(run_id)
        lines = f"-n {int(tail)}" if tail is not None else "-n +1"
        if not follow:
            return f'tail {lines} "{d}/output.log"'
        # --pid: tail ends a moment after the run's wrapper does, having printed everything.
        return f'exec tail {lines} -F --pid="$(cat "{d}/wrapper.pid")" "{d}/output.log" 2>/dev/null'


    def cancel_script(self, run_id: str, mode: str, container: str, grace_sec: float) -> str:
        """SIGTERM to the node agent (docker: `docker stop`), --grace seconds to stop its phase, then SIGKILL to
        everything left in the run's session, so no process of the run outlives `runner down`."""
        grace = max(1, int(grace_sec))
        stop = (f"docker stop -t {grace} {q(container)} >/dev/null 2>&1 || true" if mode == "docker"
                else 'pkill -TERM -P "$pid" || true')
        return _alive(self.run_dir(run_id)) + "\n".join([
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


def describe(shell, folder: RunFolder, run_id: str, handle: str, where: str) -> RunInfo | None:
    """The run's state from its folder (None: no such run). `where` names the machine in the detail line."""
    _, out = shell.script(folder.describe_script(run_id), timeout=60)
    facts = parse_lines(out)
    if facts.get("missing") or "alive" not in facts:
        return None
    meta = json.loads(facts.get("meta") or "{}")
    exit_code = int(facts["exit"]) if facts.get("exit", "").lstrip("-").isdigit() else None
    if facts["alive"] == "1":
        state = State.RUNNING
    elif exit_code is None:
        state = State.FAILED  # no exit code and no process: the machine rebooted, or the run was killed from outside
    else:
        state = state_from_exit(exit_code, cancelled=bool(facts.get("cancelled")))
    detail = f"{meta.get('mode', '?')} mode on {where}, " + (f"pid {facts.get('pid')}" if state == State.RUNNING else
                                                            f"run folder {folder.run_dir(run_id)}")
    return RunInfo(handle=handle, run_id=run_id, state=state, exit_code=exit_code if state.is_terminal() else None,
                   started_at=meta.get("started_at", ""), finished_at=facts.get("finished", ""),
                   storage=meta.get("storage", ""), detail=detail)


def require(info: RunInfo | None, run_id: str, where: str, list_hint: str) -> RunInfo:
    if info is None:
        raise BackendError(f"No run {run_id!r} on {where}.", [list_hint, "A run removed with `runner down` is gone (its storage is not)."])
    return info


def list_ids(shell, folder: RunFolder) -> list[str]:
    _, out = shell.script(folder.list_script(), timeout=60)
    return out.split()


def logs(shell, folder: RunFolder, run_id: str, follow: bool, tail: int | None) -> Iterator[str]:
    yield from shell.stream(folder.logs_command(run_id, follow, tail))


def cancel(shell, folder: RunFolder, info: RunInfo, grace_sec: float) -> RunInfo:
    """Stop the run (SIGTERM, grace, then SIGKILL to its whole session) and remove its folder."""
    mode = "docker" if info.detail.startswith("docker") else "bare"
    _, out = shell.script(folder.cancel_script(info.run_id, mode, f"nanochat-{info.run_id}", grace_sec), timeout=grace_sec + 120)
    facts = parse_lines(out)
    exit_code = int(facts["exit"]) if facts.get("exit", "").lstrip("-").isdigit() else None
    if info.state == State.RUNNING:
        info.state = state_from_exit(exit_code, cancelled=True) if exit_code not in (0, 3) else state_from_exit(exit_code)
    info.exit_code = exit_code
    return info
