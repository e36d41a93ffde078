"""TEST DOUBLE of nanochat's nanochat/dataset.py shard downloader (`python -m nanochat.dataset -n N`).

Writes small real parquet shards (a `text` column, 8 row groups) named shard_{i:05d}.parquet into
the pin's data dir (seed: base_data/, latest: base_data_climbmix/), skipping files that exist and
writing <name>.tmp then renaming, as upstream. Shard ids: seed 0..n-1; latest 0..n-1 plus the
validation shard 06542, always. NANOCHAT_DOUBLE_SHARD_FAILURES=k makes the last k shards still to
fetch 'fail' 5 attempts each; like upstream the command still exits 0.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ROW_GROUPS = 8  # >= the 8 ranks of a speedrun, so no rank of a torchrun'd double runs dry
ROWS_PER_GROUP = 16


def write_shard(path, index):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [f"Document {index}-{row}: the nanochat test double writes a little text so tokenizers and "
             f"loaders have something to read. " * 3 for row in range(ROW_GROUPS * ROWS_PER_GROUP)]
    tmp = path + ".tmp"
    pq.write_table(pa.table({"text": texts}), tmp, row_group_size=ROWS_PER_GROUP)
    os.rename(tmp, path)


def main():
    desc = "Download FineWeb-Edu 100BT dataset shards" if S.load_pin()["name"] == "seed" else "Download pretraining dataset shards"
    ctx = S.start("nanochat/dataset.py", description=desc)
    args, pin = ctx.args, ctx.pin
    max_shard = pin["max_shard"]
    data_dir = os.path.join(IO.base_dir(), pin["data_dir"])
    os.makedirs(data_dir, exist_ok=True)
    if pin["val_always_downloaded"]:
        # latest: -n counts train shards; the last shard (validation) is always added
        num_train = max_shard if args.num_files == -1 else min(args.num_files, max_shard)
        ids = list(range(num_train)) + [max_shard]
    else:
        num = max_shard + 1 if args.num_files == -1 else min(args.num_files, max_shard + 1)
        ids = list(range(num))
    ctx.print0(f"Downloading {len(ids)} shards using {args.num_workers} workers...")
    ctx.print0(f"Target directory: {data_dir}")
    ctx.print0()
    ctx.fail_point()
    todo = [i for i in ids if not os.path.exists(os.path.join(data_dir, f"shard_{i:05d}.parquet"))]
    failures = int(S.env_float("NANOCHAT_DOUBLE_SHARD_FAILURES", 0))
    failing = set(todo[len(todo) - failures:]) if failures > 0 else set()
    successful = 0
    for index in ids:
        filename = f"shard_{index:05d}.parquet"
        path = os.path.join(data_dir, filename)
        if os.path.exists(path):
            print(f"Skipping {path} (already exists)", flush=True)
            successful += 1
            continue
        print(f"Downloading {filename}...", flush=True)
        if index in failing:
            for attempt in range(1, 6):
                print(f"Attempt {attempt}/5 failed for {filename}: 503 Server Error: Service Unavailable "
                      f"for url: https://huggingface.co/datasets/.../{filename} [nanochat double]", flush=True)
                if attempt < 5:
                    print(f"Waiting {2 ** attempt} seconds before retry...", flush=True)  # not actually waited
            print(f"Failed to download {filename} after 5 attempts", flush=True)
            continue
        write_shard(path, index)
        print(f"Successfully downloaded {filename}", flush=True)
        successful += 1
    print(f"Done! Downloaded: {successful}/{len(ids)} shards to {data_dir}", flush=True)


if __name__ == "__main__":
    main()
