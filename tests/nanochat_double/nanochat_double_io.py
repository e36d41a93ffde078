"""File side of the nanochat TEST DOUBLE: base dir, input checks, checkpoints, report sections.

The checks are the point of the double: each fake script verifies the inputs the real one
would read (or download) and fails with exit 1 and an error naming the missing path, so the
runner's tests catch staging bugs. Paths and file names follow nanochat at the pinned commit.
Set NANOCHAT_DOUBLE_NETWORK=1 to pretend run-time downloads succeed instead of failing.
"""
import datetime
import errno
import json
import os
import pickle
import re
import urllib.error

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
HF_TASKS = {"ARC-Easy": "allenai/ai2_arc", "ARC-Challenge": "allenai/ai2_arc", "MMLU": "cais/mmlu",
            "GSM8K": "openai/gsm8k", "HumanEval": "openai/openai_humaneval", "SmolTalk": "HuggingFaceTB/smol-smoltalk"}
# The `datasets` config each task loads (seed's tasks/*.py); MMLU loads "all" and, in mid-training, "auxiliary_train".
HF_CONFIGS = {"ARC-Easy": ["ARC-Easy"], "ARC-Challenge": ["ARC-Challenge"], "MMLU": ["all"], "GSM8K": ["main"],
              "HumanEval": ["openai_humaneval"], "SmolTalk": ["default"]}


def network():
    return os.environ.get("NANOCHAT_DOUBLE_NETWORK", "") not in ("", "0")


def base_dir():
    # nanochat.common.get_base_dir: NANOCHAT_BASE_DIR or ~/.cache/nanochat, created on first use
    path = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(path, exist_ok=True)
    return path


def enoent(path):
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def require(path):
    if not os.path.exists(path):
        raise enoent(path)
    return path


# ----------------------------------------------------------------------------- pretraining shards

def data_dir(ctx, warn=False):
    main = os.path.join(base_dir(), ctx.pin["data_dir"])
    legacy = ctx.pin["legacy_data_dir"]
    if legacy is None:
        os.makedirs(main, exist_ok=True)  # seed's nanochat.dataset creates base_data/ on import
        return main
    if os.path.exists(main):
        return main
    if warn and ctx.master:
        # latest falls back to the pre-ClimbMix directory, loudly (rank 0, train split only)
        ctx.print0("\n" + "=" * 80 + "\n  WARNING: DATASET UPGRADE REQUIRED\n" + "=" * 80)
        ctx.print0(f"\n  Could not find: {main}\n\n  For now, falling back to your old FinewebEdu-100B dataset...")
        ctx.print0("=" * 80 + "\n")
    return os.path.join(base_dir(), legacy)


def list_shards(directory):
    names = sorted(f for f in os.listdir(directory) if f.endswith(".parquet") and not f.endswith(".tmp"))
    return [os.path.join(directory, f) for f in names]


def shards(ctx, splits=("train", "val"), warn=False):
    """Shards as nanochat's data loader sees them: the last file in sort order is validation."""
    directory = data_dir(ctx, warn=warn)
    if not os.path.isdir(directory):
        main = os.path.join(base_dir(), ctx.pin["data_dir"])
        hint = "" if main == directory else f" (nor {main})"
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT) + hint, directory)
    paths = list_shards(directory)
    if not paths:
        raise AssertionError(f"No dataset parquet files found, did you run dataset.py? "
                             f"[nanochat double: looked in {directory}]")
    if len(paths) < 2 and "train" in splits:
        raise RuntimeError(f"[nanochat double] {directory} holds 1 shard: it is the validation shard and the "
                           f"train split is empty (real nanochat would spin forever); stage >= 2 shards")
    import pyarrow.parquet as pq  # same dependency as the real loader
    groups = {p: pq.ParquetFile(p).num_row_groups for p in paths}
    # each rank reads row groups rank, rank+world, ...: a rank with none spins forever upstream
    if "train" in splits and not any(groups[p] > ctx.rank for p in paths[:-1]):
        raise RuntimeError(f"[nanochat double] rank {ctx.rank} gets no train data: every train shard in {directory} "
                           f"has <= {ctx.rank} row groups (real nanochat would spin forever)")
    if "val" in splits and groups[paths[-1]] <= ctx.rank:
        raise RuntimeError(f"[nanochat double] rank {ctx.rank} gets no val data: {paths[-1]} has "
                           f"{groups[paths[-1]]} row groups (real nanochat would spin forever)")
    return paths


# ----------------------------------------------------------------------------- tokenizer

def tokenizer_dir():
    return os.path.join(base_dir(), "tokenizer")


def load_tokenizer():
    """Returns the vocab size recorded by the double's tok_train, or None for foreign bytes."""
    path = require(os.path.join(tokenizer_dir(), "tokenizer.pkl"))
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        return int(data["vocab_size"])
    except Exception:
        return None  # staged by a test as "any bytes": accept, but skip the vocab check


def load_token_bytes():
    return require(os.path.join(tokenizer_dir(), "token_bytes.pt"))


def write_tokenizer(vocab_size):
    os.makedirs(tokenizer_dir(), exist_ok=True)
    pkl = os.path.join(tokenizer_dir(), "tokenizer.pkl")
    with open(pkl, "wb") as f:
        pickle.dump({"nanochat_double": True, "vocab_size": vocab_size}, f)
    token_bytes = os.path.join(tokenizer_dir(), "token_bytes.pt")
    with open(token_bytes, "wb") as f:
        f.write(b"nanochat-double token_bytes %d\n" % vocab_size)
    return pkl, token_bytes


# ----------------------------------------------------------------------------- run-time downloads

def require_env_dir(var, what):
    """HF_HOME / TIKTOKEN_CACHE_DIR must point at a non-empty cache, else the real run downloads."""
    value = os.environ.get(var)
    if network() or (value and os.path.isdir(value) and os.listdir(value)):
        return value
    raise ConnectionError(f"Couldn't reach {what} (offline) [nanochat double: {var}="
                          f"{value!r} is unset, missing or empty: pre-stage that cache]")


def datasets_cache():
    """Where `datasets` keeps its Arrow cache: HF_DATASETS_CACHE, else $HF_HOME/datasets, else the default under
    XDG_CACHE_HOME or ~/.cache (datasets/config.py)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "datasets")


def require_hf(task_names):
    """Seed loads tasks with HF `datasets`. Offline, datasets 4.x reads only its Arrow cache,
    <datasets cache>/<org>___<name>/<config>/..., never the hub cache: each task's folder must be there and not empty.
    Latest fetches HF's parquet files itself into $BASE/task_data/ with urllib, so there HF_HOME is irrelevant and
    task_data/ must be pre-staged."""
    from nanochat_double_support import selected_commit

    latest = selected_commit().startswith("92d63d4")
    for name in task_names:
        if name not in HF_TASKS:
            continue
        if not latest:
            if network():
                continue
            for config in HF_CONFIGS[name]:
                folder = os.path.join(datasets_cache(), HF_TASKS[name].replace("/", "___"), config)
                if not (os.path.isdir(folder) and os.listdir(folder)):
                    raise ConnectionError(f"Couldn't reach '{HF_TASKS[name]}' on the Hub (OfflineModeIsEnabled) [nanochat double: "
                                          f"no Arrow cache at {folder} (HF_HOME={os.environ.get('HF_HOME')!r}, "
                                          f"HF_DATASETS_CACHE={os.environ.get('HF_DATASETS_CACHE')!r}): pre-stage that cache]")
            continue
        task_data = os.path.join(base_dir(), "task_data")
        if not network() and not (os.path.isdir(task_data) and os.listdir(task_data)):
            raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution "
                                        f"[nanochat double: no network; pre-stage {task_data}/ for '{HF_TASKS[name]}']")


def download(ctx, url, filename, make):
    """download_file_with_lock stand-in: present -> skip; else 'download' only with the NETWORK knob."""
    path = os.path.join(base_dir(), filename)
    if os.path.exists(path):
        return path
    print(f"Downloading {url}...", flush=True)
    if not network():
        raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution "
                                    f"[nanochat double: no network; pre-stage {path}]")
    make(path)
    print(f"Downloaded to {path}", flush=True)
    return path


def words_alpha(ctx):
    # seed's SpellingBee/SimpleSpelling tasks fetch this word list into the base dir at run time
    def make(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("apple\nbanana\nstrawberry\n")
    return download(ctx, WORDS_URL, "words_alpha.txt", make)


def eval_bundle(ctx):
    """CORE needs eval_bundle/ (core.yaml, eval_meta_data.csv); a stray zip without the dir crashes."""
    bundle = os.path.join(base_dir(), "eval_bundle")
    if not os.path.exists(bundle):
        def make(path):
            os.makedirs(bundle, exist_ok=True)
            for name in ("core.yaml", "eval_meta_data.csv"):
                open(os.path.join(bundle, name), "w").close()
            open(path, "wb").close()
            ctx.print0(f"Placed eval_bundle directory at {bundle}")
        download(ctx, EVAL_BUNDLE_URL, "eval_bundle.zip", make)
    require(os.path.join(bundle, "core.yaml"))
    require(os.path.join(bundle, "eval_meta_data.csv"))
    return bundle


# ----------------------------------------------------------------------------- checkpoints

def checkpoints_root(ctx, source):
    return os.path.join(base_dir(), ctx.pin["sources"][source])  # KeyError for 'mid' at latest, as upstream


def find_model(ctx, source, model_tag=None, step=None):
    """load_model(): largest d<N> tag (else newest dir), last model_*.pt step, then model + meta + tokenizer."""
    root = checkpoints_root(ctx, source)
    if model_tag is None:
        tags = [t for t in os.listdir(root) if os.path.isdir(os.path.join(root, t))]  # ENOENT names root
        if not tags:
            raise FileNotFoundError(f"No checkpoints found in {root}")
        depth_tags = [(int(m.group(1)), t) for t in tags for m in [re.match(r"d(\d+)", t)] if m]
        if depth_tags:
            model_tag = max(depth_tags)[1]
        else:
            model_tag = max(tags, key=lambda t: os.path.getmtime(os.path.join(root, t)))
        ctx.log("nanochat.checkpoint_manager", f"No model tag provided, guessing model tag: {model_tag}")
    ckpt_dir = os.path.join(root, model_tag)
    if step is None:
        steps = [int(m.group(1)) for f in os.listdir(ckpt_dir) for m in [re.match(r"model_(\d+)\.pt$", f)] if m]
        if not steps:
            raise FileNotFoundError(f"No checkpoints found in {ckpt_dir}")
        step = max(steps)
    ctx.log("nanochat.checkpoint_manager", f"Loading model from {ckpt_dir} with step {step}")
    require(os.path.join(ckpt_dir, f"model_{step:06d}.pt"))
    with open(require(os.path.join(ckpt_dir, f"meta_{step:06d}.json")), encoding="utf-8") as f:
        meta = json.load(f)
    config = meta["model_config"]
    ctx.log("nanochat.checkpoint_manager", f"Building model with config: {config}")
    vocab = load_tokenizer()
    if vocab is not None and config.get("vocab_size") not in (None, vocab):
        raise AssertionError(f"Tokenizer vocab size {vocab} does not match model config vocab size {config['vocab_size']}")
    return ckpt_dir, step, meta


def write_pt(path, payload, extra_bytes=0):
    """A .pt file in torch.save's format: a zip archive (so a truncated one is detectably incomplete).

    Deterministic content (fixed zip timestamps) so that a resumed run's final files equal an uninterrupted
    run's. NANOCHAT_DOUBLE_CKPT_MB pads each file, so that uploads take measurable time in tests.
    """
    import zipfile
    stem = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(f"{stem}/data.pkl", date_time=(2026, 1, 1, 0, 0, 0)), pickle.dumps(payload, protocol=2))
        if extra_bytes:
            zf.writestr(zipfile.ZipInfo(f"{stem}/data/0", date_time=(2026, 1, 1, 0, 0, 0)), bytes(extra_bytes))


def checkpoint_padding():
    return int(float(os.environ.get("NANOCHAT_DOUBLE_CKPT_MB", "0") or 0) * 1024 * 1024)


def save_checkpoint(ctx, ckpt_dir, step, meta, optimizer=True):
    """Rank 0 writes model + meta; every rank writes its optimizer shard (when the script saves one)."""
    pad = checkpoint_padding()
    if ctx.master:
        os.makedirs(ckpt_dir, exist_ok=True)
        model_path = os.path.join(ckpt_dir, f"model_{step:06d}.pt")
        write_pt(model_path, {"nanochat_double": True, "step": step, "model_config": meta.get("model_config")}, pad)
        ctx.log("nanochat.checkpoint_manager", f"Saved model parameters to: {model_path}")
        meta_path = os.path.join(ckpt_dir, f"meta_{step:06d}.json")
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        ctx.log("nanochat.checkpoint_manager", f"Saved metadata to: {meta_path}")
    if optimizer:
        os.makedirs(ckpt_dir, exist_ok=True)
        optim_path = os.path.join(ckpt_dir, f"optim_{step:06d}_rank{ctx.rank:d}.pt")
        write_pt(optim_path, {"nanochat_double": True, "step": step, "rank": ctx.rank, "world_size": ctx.world_size}, pad)
        ctx.log("nanochat.checkpoint_manager", f"Saved optimizer state to: {optim_path}")


def compile_warmup(ctx):
    """torch.compile stand-in: a cold Inductor/Triton cache costs NANOCHAT_DOUBLE_COMPILE_SEC and fills the
    cache folders; a warm one (restored by the runner) is reused. Prints which, for the tests."""
    import time
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    triton = os.environ.get("TRITON_CACHE_DIR")
    marker = os.path.join(inductor, "fxgraph", "nanochat-double-graph") if inductor else None
    if marker and os.path.exists(marker):
        ctx.print0("[nanochat double] compile: warm cache hit")
        return
    time.sleep(float(os.environ.get("NANOCHAT_DOUBLE_COMPILE_SEC", "0") or 0))
    if ctx.master and marker:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write("compiled graph")
        if triton:
            os.makedirs(os.path.join(triton, "kernels"), exist_ok=True)
            with open(os.path.join(triton, "kernels", "kernel.cubin"), "wb") as f:
                f.write(b"\0" * 4096)
    ctx.print0("[nanochat double] compile: cold (compiled from scratch)")


# ----------------------------------------------------------------------------- report (seed only)

def report_log(ctx, section, data):
    """nanochat.report.get_report().log(): rank 0 writes report/<slug>.md; no-op at pins without a report."""
    if not ctx.pin["report"] or not ctx.master:
        return None
    report_dir = os.path.join(base_dir(), "report")
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, section.lower().replace(" ", "-") + ".md")
    lines = [f"## {section}", f"timestamp: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}", ""]
    for item in data:
        if not item:
            continue
        if isinstance(item, str):
            lines.append(item)
            continue
        for key, value in item.items():
            if isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
                value = f"{value:,.0f}"
            lines.append(f"- {key}: {value}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    return path


def identity_conversations(ctx):
    """Seed's CustomJSON task. Upstream only WARNS when the file is missing (and trains without
    the identity rows); the double fails instead, so a runner that forgot to stage it is caught."""
    path = os.path.join(base_dir(), "identity_conversations.jsonl")
    if not os.path.exists(path):
        print("-" * 80 + f"\nWarning: File {path} does not exist\n" + "-" * 80, flush=True)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (nanochat double: upstream would only "
                                "warn and train without identity conversations)", path)
    return path
