"""Bare mode's install on an SSH host: uv, nanochat at the plan's commit with its venv, and the runner, under
`~/.nanochat-runner`, with the same docker/ install scripts the image runs (so a bare host and the image match).

Idempotent: each part has a stamp (`installed/<part>-<key>`) written only after its script succeeded, keyed by
what went into it (the nanochat commit and, for an uploaded checkout, its content; the runner's source). A second
`runner up` checks the stamps in one round trip and installs nothing. A half-finished part has no stamp and is
installed again from scratch.

Layout on the host (RH = ~/.nanochat-runner):
  RH/bin/uv, RH/python/ (uv's Pythons), RH/nanochat/<key>/ (checkout + .venv), RH/runner/<key>/ (the runner's
  venv), RH/installed/ (stamps), RH/runs/<run id>/ (one run: plan, log, pids, exit code), RH/scratch/.

The runner goes up as its source (pyproject.toml, README.md, runner/, backends/: what the Dockerfile copies),
built on the host by docker/install-runner.sh. nanochat is cloned at the pinned commit on the host, or copied from
a folder uploaded from here (`--nanochat-src`, for forks, air-gapped hosts and the tests' double). With
`--wheelhouse DIR` (wheels plus a `uv` binary) every package comes from that uploaded folder: the host needs no
network for the install.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .base import BackendError, Log, PreflightError
from .ssh_conn import Connection, q

REPO = Path(__file__).resolve().parents[1]
RUNNER_FILES = ["pyproject.toml", "README.md", "runner", "backends"]
RH = "$HOME/.nanochat-runner"  # the runner's folder on the host, as bash sees it


def _digest(paths: list[Path]) -> str:
    """A short hash of files' names and bytes (folders walked in order; caches skipped)."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in ([root] if root.is_file() else root.rglob("*"))
                       if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"))
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def runner_source() -> dict[str, Path]:
    missing = [name for name in RUNNER_FILES if not (REPO / name).exists()]
    if missing:
        raise BackendError(
            f"Bare mode uploads the runner's source, but {REPO} lacks {', '.join(missing)} (an installed wheel, not a checkout).",
            ["Run `runner up --backend ssh` from a nanochat-runner checkout (git clone, then `uv pip install .`), or",
             "use --mode docker on a host with Docker and the NVIDIA container toolkit."],
        )
    return {name: REPO / name for name in RUNNER_FILES}


class Install:
    """What bare mode needs on one host for one plan; `paths` are absolute on the host once `home` is known."""

    def __init__(self, plan, home: str, nanochat_src: str | None = None, wheelhouse: str | None = None):
        self.plan = plan
        self.rh = f"{home}/.nanochat-runner"
        self.nanochat_src = Path(nanochat_src).expanduser().resolve() if nanochat_src else None
        self.wheelhouse = Path(wheelhouse).expanduser().resolve() if wheelhouse else None
        for what, path in (("--nanochat-src", self.nanochat_src), ("--wheelhouse", self.wheelhouse)):
            if path is not None and not path.is_dir():
                raise PreflightError(f"{what} {path} is not a folder here.", [f"Point {what} at a folder on this machine."])
        if self.wheelhouse is not None and not (self.wheelhouse / "uv").is_file():
            raise PreflightError(f"The wheelhouse {self.wheelhouse} has no `uv` binary, which an offline install needs.",
                                 [f"Copy a Linux uv binary to {self.wheelhouse}/uv (e.g. `cp $(which uv) {self.wheelhouse}/`)."])
        self.runner_files = runner_source()
        self.runner_key = _digest(list(self.runner_files.values()))
        self.nanochat_key = plan.commit[:12] + (f"-{_digest([self.nanochat_src])}" if self.nanochat_src else "")

    @property
    def nanochat_dir(self) -> str:
        return f"{self.rh}/nanochat/{self.nanochat_key}"

    @property
    def runner_venv(self) -> str:
        return f"{self.rh}/runner/{self.runner_key}"

    @property
    def runner_bin(self) -> str:
        return f"{self.runner_venv}/bin/runner"

    def parts(self) -> dict[str, str]:
        """part -> the shell test that says it is installed."""
        return {
            "uv": f"{q(self.rh)}/bin/uv --version",
            f"nanochat {self.plan.commit[:7]}": f"test -f {q(self.rh)}/installed/nanochat-{self.nanochat_key} && test -x {q(self.nanochat_dir)}/.venv/bin/python",
            f"runner {self.runner_key}": f"test -f {q(self.rh)}/installed/runner-{self.runner_key} && test -x {q(self.runner_bin)}",
        }

    def missing(self, conn: Connection) -> list[str]:
        checks = "\n".join(f"if {test} >/dev/null 2>&1; then echo 'have={part}'; fi" for part, test in self.parts().items())
        _, out = conn.script(checks, timeout=60)
        have = {line[5:] for line in out.splitlines() if line.startswith("have=")}
        return [part for part in self.parts() if part not in have]

    def ensure(self, conn: Connection, log: Log) -> None:
        missing = self.missing(conn)
        if not missing:
            log(f"install: nothing to do, {', '.join(self.parts())} already in {self.rh}")
            return
        log(f"install: {', '.join(missing)} into {self.rh}" + (" (offline, from the uploaded wheelhouse)" if self.wheelhouse else ""))
        upload = f"{self.rh}/tmp/upload"
        conn.script(f"rm -rf {q(upload)}", timeout=120)
        conn.upload({"docker": REPO / "docker"}, upload)  # the install scripts themselves
        if any(p.startswith("runner") for p in missing):
            conn.upload(self.runner_files, f"{upload}/runner-src")
        if any(p.startswith("nanochat") for p in missing) and self.nanochat_src:
            conn.upload({"nanochat-src": self.nanochat_src}, upload)
        if self.wheelhouse:
            conn.upload({"wheelhouse": self.wheelhouse}, upload)
        code, out = conn.script(self._script(missing, upload), timeout=3600)
        for line in out.splitlines()[-40:]:
            log(f"install: {line}")
        if code:
            raise PreflightError(
                f"Installing on {conn.target} failed (exit {code}); the output is above. Nothing was started.",
                ["Fix what the install scripts report (network to PyPI/GitHub, disk space), then run this again: "
                 "parts already installed are kept.", "Or run the same install by hand on the host: "
                 "`RUNNER_SRC=... bash docker/install.sh` (see docker/env.sh for its settings)."],
            )

    def _script(self, missing: list[str], upload: str) -> str:
        env = {
            "RH": self.rh, "PATH": f"{self.rh}/bin:$PATH", "NANOCHAT_DIR": self.nanochat_dir, "NANOCHAT_REF": self.plan.commit,
            "RUNNER_SRC": f"{upload}/runner-src", "RUNNER_VENV": self.runner_venv, "RUNNER_BIN_DIR": f"{self.rh}/bin",
            "UV_PYTHON_INSTALL_DIR": f"{self.rh}/python", "INSTALL_UV_CACHE_DIR": f"{self.rh}/tmp/uv-cache",
            "NANOCHAT_FROM": f"{upload}/nanochat-src" if self.nanochat_src else "",
            "WHEELS": f"{upload}/wheelhouse" if self.wheelhouse else "",
            "NANOCHAT_OPEN_TO_ALL": "0",  # a checkout in the user's home stays the user's (the image opens its own to every uid)
        }
        lines = ["set -euo pipefail"] + [f'export {k}="{v}"' for k, v in env.items()]
        lines += ['mkdir -p "$RH/bin" "$RH/installed" "$RH/nanochat" "$RH/runner"']
        # Why the order: uv first (the other two use it), nanochat before the runner (whose venv takes the
        # Python nanochat pins). Each stamp is written only after its script succeeded.
        if "uv" in missing:
            lines.append(f'bash {q(upload)}/docker/install-uv.sh')
        if any(p.startswith("nanochat") for p in missing):
            lines += ['rm -rf "$NANOCHAT_DIR"', f'bash {q(upload)}/docker/install-nanochat.sh',
                      f'touch "$RH/installed/nanochat-{self.nanochat_key}"']
        if any(p.startswith("runner") for p in missing):
            lines += ['rm -rf "$RUNNER_VENV"', f'bash {q(upload)}/docker/install-runner.sh', f'touch "$RH/installed/runner-{self.runner_key}"']
        lines.append(f"rm -rf {q(upload)}")
        return "\n".join(lines) + "\n"
