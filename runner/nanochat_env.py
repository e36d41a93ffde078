"""Finding nanochat on the node and building the environment its phases run in.

The image sets NANOCHAT_DIR and carries the checkout's own venv; on a bare host a user may point `--python` at
an existing environment instead. The checkout's commit must match the plan's pin: the plan's flags were checked
against that commit, and a different one may refuse them hours into a run.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import NanochatError

COMMIT_FILE = ".nanochat-commit"  # written by the image build when the checkout has no .git


@dataclass
class Nanochat:
    root: Path
    python: str
    commit: str


def find_commit(root: Path) -> str:
    if (root / ".git").exists():
        try:
            return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    marker = root / COMMIT_FILE
    if marker.is_file():
        return marker.read_text().strip()
    return ""


def locate(nanochat_dir: str | None, python: str | None, plan_commit: str, recipe: str) -> Nanochat:
    if not nanochat_dir:
        raise NanochatError(
            "No nanochat checkout given.",
            ["Run inside the runner image (it sets NANOCHAT_DIR), or", f"pass --nanochat-dir PATH to a checkout of commit {plan_commit[:7]}."],
        )
    root = Path(nanochat_dir).expanduser().resolve()
    if not (root / "scripts").is_dir() or not (root / "nanochat").is_dir():
        raise NanochatError(
            f"{root} is not a nanochat checkout (no scripts/ and nanochat/ folders).",
            [f"git clone https://github.com/karpathy/nanochat {root} && git -C {root} checkout {plan_commit[:7]}", "or pass --nanochat-dir to the right folder."],
        )
    commit = find_commit(root)
    if not commit:
        raise NanochatError(
            f"Cannot tell which nanochat commit is at {root} (no .git and no {COMMIT_FILE}).",
            [f"Use a git checkout, or write the commit hash into {root / COMMIT_FILE}."],
        )
    if not (plan_commit.startswith(commit) or commit.startswith(plan_commit)):
        raise NanochatError(
            f"nanochat at {root} is commit {commit[:7]}, but recipe {recipe!r} is pinned to {plan_commit[:7]}; "
            "its flags were checked against that commit only.",
            [f"git -C {root} checkout {plan_commit[:7]}", "or choose the recipe for the checkout you have (`runner plan --recipe ...`)."],
        )
    # Absolute (the phases run with the checkout as cwd), but not resolved: a venv's python is a symlink.
    interpreter = os.path.abspath(python) if python and os.sep in python else (python or str(root / ".venv" / "bin" / "python"))
    if not Path(interpreter).exists() and not python:
        raise NanochatError(
            f"nanochat's venv is missing ({interpreter}).",
            [f"cd {root} && uv sync --extra gpu", "or pass --python /path/to/python of an environment with nanochat's dependencies."],
        )
    try:
        subprocess.run([interpreter, "-c", "import sys"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise NanochatError(f"The interpreter {interpreter} does not run ({e}).", ["Pass --python with a working interpreter."])
    return Nanochat(root=root, python=interpreter, commit=commit)


def phase_env(base_dir: Path, cache_dir: Path, extra: dict | None = None) -> dict:
    """The environment of every nanochat command: inherited, plus the settings that keep data on scratch."""
    env = dict(os.environ)
    env.update(
        {
            "NANOCHAT_BASE_DIR": str(base_dir),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
            "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        }
    )
    if not env.get("WANDB_API_KEY"):
        # nanochat only logs to wandb for a named --run; without a key, make sure nothing tries to log in.
        env["WANDB_MODE"] = "disabled"
    env.update(extra or {})
    return env


def command(nanochat: Nanochat, step, rendezvous=None) -> list[str]:
    """argv for one step: plain `python -m` on one process, torchrun (from the same interpreter) on several, and
    on several nodes torchrun with this node's rank and the master's static rendezvous (rendezvous.py).

    The `--` matters: without it torchrun parses the script's options as its own, and `--run=dummy` fails as
    an ambiguous abbreviation of torchrun's `--run-path`.
    """
    several_nodes = rendezvous is not None and rendezvous.multinode and step.all_gpus
    if step.nproc > 1 or several_nodes:
        launch = rendezvous.torchrun_args(step.nproc) if several_nodes else ["--standalone", f"--nproc_per_node={step.nproc}"]
        return [nanochat.python, "-m", "torch.distributed.run", *launch, "-m", step.module, "--", *step.args]
    return [nanochat.python, "-m", step.module, *step.args]
