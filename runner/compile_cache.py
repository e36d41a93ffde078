"""torch.compile caches as artifacts: a second run starts training at once instead of recompiling.

The Inductor and Triton cache folders live in scratch (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR). They are
archived to `<storage>/cache/compile/<key>/` where the key names everything a compiled kernel depends on:
torch and triton versions, GPU name, nanochat commit, depth and GPU count. They are restored before the first
step that compiles, saved in the background once the first training steps have run, and again when the step
ends; `manifest.json` is written last, so a half-uploaded archive is never restored. Hit or miss is logged and
written into the status file.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from .storage import Storage

FOLDERS = ("inductor", "triton")
EARLY_SAVE_AT_STEP = 5  # a few optimizer steps in, the training graph has compiled
PROBE = (
    "import json, importlib.metadata as m\n"
    "def v(name):\n"
    "    try:\n        return m.version(name)\n    except Exception:\n        return 'none'\n"
    "gpu = 'cpu'\n"
    "try:\n    import torch\n    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'\nexcept Exception:\n    pass\n"
    "print(json.dumps({'torch': v('torch'), 'triton': v('triton'), 'gpu': gpu}))\n"
)


def probe(python: str, cwd: Path) -> dict:
    """torch/triton versions and the GPU name, as nanochat's own interpreter sees them."""
    try:
        out = subprocess.run([python, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=180, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {"torch": "unknown", "triton": "unknown", "gpu": "unknown"}


def cache_key(versions: dict, plan) -> str:
    raw = f"torch-{versions['torch']}_triton-{versions['triton']}_{versions['gpu']}_{plan.commit[:7]}_d{plan.depth}_{plan.gpus}gpu"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", raw)


def _signature(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


class CompileCache:
    def __init__(self, storage: Storage, cache_dir: Path, key: str, log=print):
        self.storage, self.cache_dir, self.key, self.log = storage, cache_dir, key, log
        self.rel = f"cache/compile/{key}"
        self.outcome: str | None = None  # "hit" | "miss" once restored
        self.saved_signature: tuple | None = None
        self.lock = threading.Lock()
        self.background: threading.Thread | None = None
        self.saves: list[dict] = []

    def restore(self) -> str:
        """Restore the archived caches into scratch once per run; returns "hit" or "miss"."""
        if self.outcome is not None:
            return self.outcome
        started = time.monotonic()
        if not self.storage.exists(f"{self.rel}/manifest.json"):
            self.outcome = "miss"
            self.log(f"compile cache miss ({self.key}): this run compiles from scratch and saves the cache")
            return self.outcome
        manifest = json.loads(self.storage.read_text(f"{self.rel}/manifest.json"))
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            for name in FOLDERS:
                if name not in manifest["archives"]:
                    continue
                archive = Path(tmp) / f"{name}.tar.gz"
                self.storage.fs.get_file(self.storage.path(f"{self.rel}/{name}.tar.gz"), str(archive))
                target = self.cache_dir / name
                target.mkdir(parents=True, exist_ok=True)
                with tarfile.open(archive) as tar:
                    tar.extractall(target, filter="data")
        self.saved_signature = tuple(_signature(self.cache_dir / n) for n in FOLDERS)
        files = sum(s[0] for s in self.saved_signature)
        self.outcome = "hit"
        self.log(f"compile cache hit ({self.key}): restored {files} files in {time.monotonic() - started:.1f}s")
        return self.outcome

    def save(self, reason: str) -> bool:
        """Archive and upload the caches if they changed since the last save; True when something was saved."""
        with self.lock:
            signature = tuple(_signature(self.cache_dir / n) for n in FOLDERS)
            if signature == self.saved_signature or sum(s[0] for s in signature) == 0:
                return False
            started = time.monotonic()
            archives = {}
            with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
                for name in FOLDERS:
                    folder = self.cache_dir / name
                    if not folder.is_dir():
                        continue
                    archive = Path(tmp) / f"{name}.tar.gz"
                    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                        tar.add(folder, arcname=".")
                    self.storage.fs.makedirs(self.storage.path(self.rel), exist_ok=True)
                    self.storage.fs.put_file(str(archive), self.storage.path(f"{self.rel}/{name}.tar.gz"))
                    archives[name] = archive.stat().st_size
            manifest = {"key": self.key, "archives": archives, "files": sum(s[0] for s in signature), "reason": reason,
                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.storage.write_text(f"{self.rel}/manifest.json", json.dumps(manifest, indent=2))
            self.saved_signature = signature
            self.saves.append(manifest)
            self.log(f"compile cache saved ({reason}): {manifest['files']} files, {sum(archives.values()) / 1e6:,.1f} MB in {time.monotonic() - started:.1f}s")
            return True

    def save_in_background(self, reason: str) -> None:
        if self.background and self.background.is_alive():
            return

        def run() -> None:
            from .checkpoints import lower_priority

            lower_priority()
            try:
                self.save(reason)
            except Exception as e:  # noqa: BLE001 - a cache is an optimisation: never fail the run for it
                self.log(f"compile cache save failed ({type(e).__name__}: {e}); will try again when the step ends")

        self.background = threading.Thread(target=run, name="compile-cache-save", daemon=True)
        self.background.start()

    def wait(self) -> None:
        if self.background:
            self.background.join()
