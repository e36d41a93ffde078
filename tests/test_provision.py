"""Provisioning nanochat at the plan's commit when no checkout is given: docker/install-nanochat.sh (the image's own
script) clones from a remote and builds the venv, once; later runs reuse it; a failed or interrupted install leaves
nothing that passes for ready. The remote is a local bare git repository of the test double, the packages come
from the tests' wheelhouse (offline), as in the image tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from harness import DOUBLE
from runner.errors import NanochatError
from runner.provision import STAMP, provision
from tests.infra import image


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=str(cwd), check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """(commit, bare repository) of the double, and the environment that points provisioning at them."""
    work = tmp_path / "double-src"
    shutil.copytree(DOUBLE, work, ignore=shutil.ignore_patterns("__pycache__", "report.md"))
    (work / "requirements.txt").write_text("pyarrow\n")  # the double has no uv.lock: the script's "no lock" path
    git("init", "-q", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "double", cwd=work)
    bare = tmp_path / "nanochat.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    monkeypatch.setenv("RUNNER_NANOCHAT_REPO", f"file://{bare}")
    monkeypatch.setenv("RUNNER_NANOCHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WHEELS", str(image.wheelhouse()))
    return git("rev-parse", "HEAD", cwd=work), bare


def test_provisioning_clones_at_the_commit_builds_the_venv_once_and_reuses_it(remote, tmp_path):
    commit, bare = remote
    lines: list[str] = []
    target = provision(commit, "cpu", log=lines.append)
    assert target == tmp_path / "cache" / f"{commit[:12]}-cpu"
    assert git("rev-parse", "HEAD", cwd=target) == commit
    assert f"[install] cloning file://{bare} at {commit}" in lines  # the image's own script did it
    assert subprocess.run([str(target / ".venv/bin/python"), "-c", "import pyarrow"]).returncode == 0
    assert (target / STAMP).read_text() == f"{commit} cpu\n"
    assert oct(target.stat().st_mode & 0o777) != oct(0o777)  # a user's cache is not opened to every uid
    again: list[str] = []
    assert provision(commit, "cpu", log=again.append) == target
    assert again == [f"nanochat {commit[:7]} (cpu) is ready at {target}"]  # reused: the script did not run


def test_an_interrupted_install_is_built_again_and_a_failed_one_leaves_nothing(remote, tmp_path):
    commit, _ = remote
    half = tmp_path / "cache" / f"{commit[:12]}-cpu"
    (half / "nanochat").mkdir(parents=True)  # what a Ctrl-C in the middle of the clone leaves: no stamp
    lines: list[str] = []
    provision(commit, "cpu", log=lines.append)
    assert any(line.startswith("[install] cloning") for line in lines) and (half / STAMP).exists()
    missing = "0" * 40
    with pytest.raises(NanochatError, match=f"Provisioning nanochat {missing[:7]} failed") as failed:
        provision(missing, "cpu", log=lambda _line: None)
    assert "--nanochat-dir" in str(failed.value)
    assert not (tmp_path / "cache" / f"{missing[:12]}-cpu").exists()
