"""nanochat at the plan's commit, for a machine that has none: cloned into a cache folder and given the venv its own
uv.lock describes, by the same script that builds the image (docker/install-nanochat.sh), once.

`runner up` on a laptop or a fresh GPU box needs no checkout: the node agent provisions
`~/.cache/nanochat-runner/nanochat/<commit>-<gpu|cpu>/` (torch for CUDA where nvidia-smi lists GPUs, the CPU build
elsewhere), writes a stamp last, and reuses it from then on. A second runner waits on a lock instead of building
the same folder; a folder without its stamp (an interrupted install) is built again. `RUNNER_NANOCHAT_REPO` clones
from another remote (a fork, a mirror); `WHEELS` installs offline from a folder of wheels (see docker/env.sh).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import NanochatError

STAMP = ".runner-provisioned"
SCRIPT = "install-nanochat.sh"


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "nanochat-runner" / "nanochat"
    return Path(os.environ.get("RUNNER_NANOCHAT_CACHE") or default).expanduser().resolve()


def install_script() -> Path:
    """docker/install-nanochat.sh: beside the package in a checkout, or where the wheel installed it."""
    for folder in (Path(__file__).resolve().parents[1] / "docker", Path(sys.prefix) / "share" / "nanochat-runner" / "docker"):
        if (folder / SCRIPT).is_file() and (folder / "env.sh").is_file():
            return folder / SCRIPT
    raise NanochatError("The runner's install scripts are missing from this installation (docker/install-nanochat.sh).",
                        ["Reinstall the runner from its checkout (`uv pip install .`), or pass --nanochat-dir to a nanochat checkout."])


def uv_binary() -> str:
    """uv: on PATH, or the one the `uv` package put beside this interpreter."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise NanochatError("uv is not installed, and nanochat's venv is built with it.",
                            ["pip install uv (it comes with nanochat-runner), or pass --nanochat-dir to a ready checkout."]) from None


def provision(commit: str, extra: str, log=print) -> Path:
    """The nanochat checkout at `commit` with its venv (`extra`: gpu or cpu), made once and reused."""
    root = cache_root()
    target = root / f"{commit[:12]}-{extra}"
    stamp_text = f"{commit} {extra}\n"
    if _stamped(target, stamp_text):
        log(f"nanochat {commit[:7]} ({extra}) is ready at {target}")
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another runner building the same folder: wait for it
        if _stamped(target, stamp_text):
            return target
        shutil.rmtree(target, ignore_errors=True)  # what an interrupted install left
        log(f"provisioning nanochat {commit[:7]} with its {extra} venv at {target} (once; later runs reuse it)")
        _run_script(target, commit, extra, log)
        (target / STAMP).write_text(stamp_text)
    return target


def _stamped(target: Path, text: str) -> bool:
    try:
        return (target / STAMP).read_text() == text
    except OSError:
        return False


def _run_script(target: Path, commit: str, extra: str, log) -> None:
    uv = uv_binary()
    with tempfile.TemporaryDirectory(prefix="runner-provision-") as tmp:
        env = {
            **os.environ,
            "PATH": os.pathsep.join([str(Path(uv).parent), os.environ.get("PATH", "")]),
            "NANOCHAT_DIR": str(target), "NANOCHAT_REF": commit, "NANOCHAT_EXTRA": extra, "NANOCHAT_OPEN_TO_ALL": "0",
            "UV_PYTHON_INSTALL_DIR": str(cache_root() / "python"), "INSTALL_UV_CACHE_DIR": str(Path(tmp) / "uv-cache"),
        }
        if os.environ.get("RUNNER_NANOCHAT_REPO"):
            env["NANOCHAT_REPO"] = os.environ["RUNNER_NANOCHAT_REPO"]
        proc = subprocess.Popen(["bash", str(install_script())], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:
            log(line.rstrip())
            tail = (tail + [line.rstrip()])[-15:]
        if proc.wait():
            shutil.rmtree(target, ignore_errors=True)
            raise NanochatError(
                f"Provisioning nanochat {commit[:7]} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                ["Fix what it reports (network to GitHub and PyPI, disk space), then run the same command again.",
                 "Or pass --nanochat-dir to a nanochat checkout at that commit with its .venv (or set NANOCHAT_DIR)."],
            )


def nanochat_dir(given: str | None, plan, log=print) -> str:
    """The checkout to use: the one given (--nanochat-dir, $NANOCHAT_DIR), else the provisioned one for the plan."""
    if given:
        return given
    return str(provision(plan.commit, "gpu" if plan.on_gpus else "cpu", log=log))
