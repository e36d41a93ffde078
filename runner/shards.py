"""Checking data shards: nanochat's downloader exits 0 even when shards failed, so count and inspect them."""

from __future__ import annotations

from pathlib import Path

PARQUET_MAGIC = b"PAR1"


def expected_names(data: dict) -> list[str]:
    """The shard files `nanochat.dataset -n N` produces at this pin (plus a fixed validation shard, if any)."""
    indices = list(range(data["shards"]))
    if data.get("val_shard_index") is not None and data["val_shard_index"] not in indices:
        indices.append(data["val_shard_index"])
    return [data["shard_name"].format(index=i) for i in indices]


def is_whole_parquet(path: Path) -> bool:
    """A parquet file starts and ends with PAR1; a truncated download does not end with it."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(size - 4)
            tail = f.read(4)
        return head == PARQUET_MAGIC and tail == PARQUET_MAGIC
    except OSError:
        return False


def problems(data_dir: Path, data: dict) -> list[str]:
    """What is wrong with the shards in `data_dir` (empty: all expected shards are there and whole)."""
    names = expected_names(data)
    missing = [n for n in names if not (data_dir / n).exists()]
    broken = [n for n in names if (data_dir / n).exists() and not is_whole_parquet(data_dir / n)]
    out = []
    if missing:
        out.append(f"{len(missing)} of {len(names)} shards are missing (first: {', '.join(missing[:3])})")
    if broken:
        out.append(f"{len(broken)} shards are not whole parquet files (first: {', '.join(broken[:3])})")
    return out
