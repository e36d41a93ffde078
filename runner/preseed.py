"""Pre-seeding: files nanochat would download lazily mid-run are put into storage before any training starts.

nanochat fetches the CORE eval bundle at base_train's first CORE evaluation (no retry, no timeout: a DNS blip
there has killed multi-hour runs), curls the identity conversations, lets tok_eval fetch tiktoken encodings and
the chat phases fetch HuggingFace datasets. Here each item is fetched once, with retries and timeouts, into
storage; later runs and air-gapped clusters find it there and touch no network. Items come from the recipe:
`url` (optionally unzipped) or `python` (a snippet run with nanochat's interpreter, filling the cache folder
named by `env_dir`).

An item counts as present only with its manifest, `_runner/preseed/<name>.json`, written after all its files
(as checkpoints do): it lists every file's size, so an upload that was cut, or a hand copy holding only part of
the item, is fetched again (or, with --offline, named) instead of failing hours later inside a phase. Whoever
copies an item by hand writes the manifest last, listing the files, or `{}` to vouch for the copy as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import subprocess
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tenacity import retry, stop_after_attempt, wait_exponential

from .errors import PreseedError
from .storage import RUNNER_DIR

MANIFEST_DIR = f"{RUNNER_DIR}/preseed"
# Every variable a library reads for the cache an item's `env_dir` names, with its place under that folder (None:
# cleared, so the library derives it from the others). `datasets` prefers HF_DATASETS_CACHE over HF_HOME and the
# hub HF_HUB_CACHE (or the older HUGGINGFACE_HUB_CACHE): left as a cluster sets them, an online pre-seed would fill
# another folder and an offline run would look elsewhere (offline, `datasets` 4.x reads only its Arrow cache,
# $HF_DATASETS_CACHE = $HF_HOME/datasets/<org>___<name>/<config>/...).
CACHE_VARIABLES = {
    "HF_HOME": {"HF_DATASETS_CACHE": "datasets", "HF_HUB_CACHE": "hub", "HUGGINGFACE_HUB_CACHE": "hub",
                "HF_MODULES_CACHE": "modules", "HF_ASSETS_CACHE": "assets", "HF_XET_CACHE": "xet",
                "HF_DATASETS_DOWNLOADED_DATASETS_PATH": None, "HF_DATASETS_EXTRACTED_DATASETS_PATH": None},
    "TIKTOKEN_CACHE_DIR": {"DATA_GYM_CACHE_DIR": None},
}


def cache_env(variable: str, folder: Path) -> dict[str, str | None]:
    """{variable: value, or None to remove it} pointing every cache variable of that library at `folder`."""
    env: dict[str, str | None] = {variable: str(folder)}
    for name, sub in CACHE_VARIABLES.get(variable, {}).items():
        env[name] = str(folder / sub) if sub else None
    return env


def apply_env(env: dict, changes: dict) -> dict:
    """`env` with `changes` applied: a None value removes the variable."""
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env

DOWNLOAD_TIMEOUT_SEC = 60  # per socket operation, not for the whole file
PYTHON_TIMEOUT_SEC = 2 * 3600
# Tries per item and the first back-off (doubling, at most 30 s); tunable for slow links or quick checks.
ATTEMPTS = int(os.environ.get("RUNNER_PRESEED_ATTEMPTS", "4"))
BACKOFF_SEC = float(os.environ.get("RUNNER_PRESEED_BACKOFF_SEC", "2"))


@dataclass
class Item:
    name: str
    spec: dict

    @property
    def path(self) -> str:
        """Where the item lives in storage."""
        return self.spec["path"]

    def local(self, base_dir: Path, cache_dir: Path) -> Path:
        """Where a phase expects it: a cache folder named by an env var, or nanochat's own name in the base dir."""
        if self.spec.get("cache"):
            return cache_dir / Path(self.path).name
        return base_dir / self.path

    def env(self, base_dir: Path, cache_dir: Path) -> dict[str, str | None]:
        """What a phase using this item sets (None: removes) so its library finds the staged cache, offline."""
        if not self.spec.get("cache"):
            return {}
        return {**cache_env(self.spec["env_dir"], self.local(base_dir, cache_dir)), **self.spec.get("offline_env", {})}

    @property
    def manifest(self) -> str:
        """Where its manifest lives in storage, written after the item's files."""
        return f"{MANIFEST_DIR}/{self.name}.json"

    def how_to_provide(self, storage_url: str) -> str:
        target = f"{storage_url.rstrip('/')}/{self.path}"
        last = (f"; last, write {storage_url.rstrip('/')}/{self.manifest} listing the files "
                '(`{"files": {"relative/path": size, ...}}`, or `{}` to vouch for the copy)')
        if "url" in self.spec:
            unzip = ", unzipped," if self.spec.get("unzip") else ""
            return f"{self.name}: download {self.spec['url']}{unzip} and copy it to {target}{last}"
        env_dir = self.spec.get("env_dir", "CACHE_DIR")
        return f"{self.name}: run nanochat's python with {env_dir}=/some/dir and this code, then copy /some/dir to {target}{last}:\n" + "\n".join(
            "        " + line for line in self.spec["python"].strip().splitlines()
        )


def items(plan) -> dict[str, Item]:
    return {name: Item(name, spec) for name, spec in plan.preseed.items()}


def manifest_for(local: Path) -> dict:
    """The manifest of an item fetched into `local` (a file or a folder): every file's size."""
    if local.is_file():
        files = {"": local.stat().st_size}
    else:
        files = {p.relative_to(local).as_posix(): p.stat().st_size for p in sorted(local.rglob("*")) if p.is_file()}
    return {"files": files, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def stored_problem(storage, item: Item) -> str | None:
    """None when the item is whole in storage; else what is wrong, in words."""
    found = storage.find(item.path)
    if not found:
        return f"not in storage at {storage.url_of(item.path)}"
    try:
        manifest = json.loads(storage.read_text(item.manifest))
    except FileNotFoundError:
        return f"in storage without its manifest {storage.url_of(item.manifest)} (an upload that was cut, or a copy made by hand)"
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        return f"in storage, but its manifest {storage.url_of(item.manifest)} is unreadable"
    listed = manifest.get("files")
    if listed is None:
        return None  # a hand copy vouched for as a whole
    wrong = sorted(rel for rel, size in listed.items() if rel not in found or found[rel][0] != size)
    if wrong:
        return (f"incomplete in storage: {len(wrong)} of {len(listed)} files missing or of another size "
                f"(first: {storage.url_of(item.path + ('/' + wrong[0] if wrong[0] else ''))})")
    return None


def store(storage, item: Item, local: Path, push, log=print) -> None:
    """Copy a fetched item into storage, then its manifest: only then does it count as present."""
    push(local, item.path)
    storage.write_text(item.manifest, json.dumps(manifest_for(local), indent=2))
    log(f"pre-seed {item.name}: in storage ({storage.url_of(item.path)}, manifest written)")


@retry(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=BACKOFF_SEC, max=30), reraise=True)
def _download(url: str, target: Path) -> None:
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SEC) as response, part.open("wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)
        expected = response.headers.get("Content-Length")
    if expected is not None and part.stat().st_size != int(expected):
        raise OSError(f"{url}: got {part.stat().st_size} bytes of {expected}")
    part.replace(target)


def _unzip_into(archive: Path, target: Path) -> None:
    """Unpack so that `target` is the item folder, whether or not the zip wraps it in a top-level folder."""
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        entries = [p for p in Path(tmp).iterdir() if p.name != "__MACOSX"]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(source), str(target))


def fetch(item: Item, workdir: Path, nanochat, base_dir: Path, cache_dir: Path, log=print) -> Path:
    """Download one item into local scratch; returns the local file or folder. Raises on failure."""
    local = item.local(base_dir, cache_dir)
    local.parent.mkdir(parents=True, exist_ok=True)
    if "url" in item.spec:
        log(f"pre-seed {item.name}: downloading {item.spec['url']}")
        if item.spec.get("unzip"):
            archive = workdir / f"{item.name}.zip"
            _download(item.spec["url"], archive)
            _unzip_into(archive, local)
            archive.unlink()
        else:
            _download(item.spec["url"], local)
        return local
    # A python item fills the folder its env var names; `collect` is the part of it that is the item.
    fill = workdir / f"preseed-{item.name}"
    shutil.rmtree(fill, ignore_errors=True)
    fill.mkdir(parents=True)
    log(f"pre-seed {item.name}: running its download code with nanochat's python")
    from .nanochat_env import nanochat_environ

    env = apply_env(nanochat_environ(), cache_env(item.spec["env_dir"], fill))

    @retry(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=BACKOFF_SEC, max=30), reraise=True)
    def run() -> None:
        result = subprocess.run([nanochat.python, "-c", item.spec["python"]], cwd=nanochat.root, env=env, capture_output=True, text=True, timeout=PYTHON_TIMEOUT_SEC)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise OSError(f"exit {result.returncode}: {last[0]}")

    run()
    collected = fill / item.spec.get("collect", ".")
    if not collected.is_dir() or not any(collected.iterdir()):
        raise OSError(f"the download code ran but left {collected} empty")
    if local.exists():
        shutil.rmtree(local)
    shutil.move(str(collected), str(local))
    shutil.rmtree(fill, ignore_errors=True)
    return local


def missing_error(failed: dict[str, str], all_items: dict[str, Item], storage_url: str) -> PreseedError:
    lines = [f"{name}: {reason}" for name, reason in failed.items()]
    return PreseedError(
        "Could not pre-seed files the run needs; no training phase has started:\n  " + "\n  ".join(lines),
        [
            *(all_items[name].how_to_provide(storage_url) for name in failed),
            "Or run with --offline to skip the steps that need them.",
            "Then run the same command again: everything already in storage is reused.",
        ],
    )
