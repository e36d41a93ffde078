"""Shared machinery of the nanochat TEST DOUBLE (not nanochat itself).

Every fake script/module of the double calls `start()` first. It
- picks the pinned nanochat commit (NANOCHAT_DOUBLE_COMMIT or .nanochat-commit) and loads
  that pin's flag table (flags-<short>.json from NANOCHAT_DOUBLE_FLAGS_DIR or <repo>/runner/recipes),
- fails like `python -m` of a missing module when the script does not exist at that pin,
- appends one JSON line per invocation to NANOCHAT_DOUBLE_CALLS,
- builds an argparse parser with exactly the pin's flags (unknown flag -> exit 2, as argparse does),
- reads torchrun's RANK/LOCAL_RANK/WORLD_SIZE the way nanochat's get_dist_info() does,
- and offers the knobs (injected failures, hangs, step sleeps) and nanochat-looking printing.
No torch import: the double must run in CI without it.
"""
import argparse
import ast
import datetime
import json
import operator
import os
import re
import sys
import time

DOUBLE_ROOT = os.path.dirname(os.path.abspath(__file__))

# What differs between the two pins beyond the flag tables (read from the real sources).
PINS = {
    "a1ccb3d": dict(name="seed", data_dir="base_data", legacy_data_dir=None, max_shard=1822,
                    val_always_downloaded=False, report=True, data_label="fwe",
                    extra_modules={"nanochat/report.py"},
                    sources={"base": "base_checkpoints", "mid": "mid_checkpoints",
                             "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}),
    "92d63d4": dict(name="latest", data_dir="base_data_climbmix", legacy_data_dir="base_data", max_shard=6542,
                    val_always_downloaded=True, report=False, data_label="climbmix",
                    extra_modules=set(),
                    sources={"base": "base_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}),
}

# argparse `choices` are not in the flag tables; these come from the real sources (both pins).
CHOICES = {
    ("scripts/chat_cli.py", "--device-type"): ["cuda", "cpu", "mps"],
    ("scripts/chat_cli.py", "--dtype"): ["float32", "bfloat16"],
    ("scripts/chat_eval.py", "--device-type"): ["cuda", "cpu", "mps"],
    ("scripts/chat_eval.py", "--dtype"): ["float32", "bfloat16"],
    ("scripts/chat_web.py", "--device-type"): ["cuda", "cpu", "mps"],
    ("scripts/chat_web.py", "--dtype"): ["float32", "bfloat16"],
    ("scripts/base_train.py", "--fp8-recipe"): ["rowwise", "tensorwise"],
}

CALL_ENV = ["NANOCHAT_BASE_DIR", "OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME",
            "TIKTOKEN_CACHE_DIR", "WANDB_MODE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "NANOCHAT_DTYPE",
            "TORCHDYNAMO_DISABLE"]
SECRET_ENV = ["WANDB_API_KEY", "HF_TOKEN"]  # recorded as present/absent only, never the value

FAKE_GPU = "NVIDIA H100 80GB HBM3"  # the double pretends to sit on an H100 box (device_type cuda)


class UsageError(Exception):
    """Stands in for wandb.errors.UsageError."""


def env_float(name, default):
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def selected_commit():
    commit = os.environ.get("NANOCHAT_DOUBLE_COMMIT", "").strip()
    if not commit:
        with open(os.path.join(DOUBLE_ROOT, ".nanochat-commit"), encoding="utf-8") as f:
            commit = f.read().strip()
    return commit


def flags_dir():
    if os.environ.get("NANOCHAT_DOUBLE_FLAGS_DIR"):
        return os.environ["NANOCHAT_DOUBLE_FLAGS_DIR"]
    # walk up from the double's own location to the repo that holds runner/recipes/
    here = DOUBLE_ROOT
    while True:
        candidate = os.path.join(here, "runner", "recipes")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            raise SystemExit("[nanochat double] cannot find runner/recipes/; set NANOCHAT_DOUBLE_FLAGS_DIR")
        here = parent


def load_pin():
    commit = selected_commit()
    short = commit[:7]
    if short not in PINS:
        raise SystemExit(f"[nanochat double] unknown nanochat commit {commit!r}: the double knows {sorted(PINS)}")
    path = os.path.join(flags_dir(), f"flags-{short}.json")
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    pin = dict(PINS[short], commit=commit, short=short, flags=table)
    pin["modules"] = set(table) | pin["extra_modules"]
    return pin


_BINOPS = {ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub, ast.Pow: operator.pow}


def _literal(text):
    """Evaluate a default as written in the source: literals and simple arithmetic like `20 * 524288`."""
    def ev(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported default expression: {text!r}")
    return ev(ast.parse(text, mode="eval").body)


def build_parser(rel_path, table, description=None):
    parser = argparse.ArgumentParser(description=description)
    types = {"int": int, "float": float, "str": str}
    for key, spec in table.items():
        names = key.split()
        kwargs = {}
        if "action" in spec:
            kwargs["action"] = _literal(spec["action"])
        if "type" in spec:
            kwargs["type"] = types[spec["type"]]
        if "default" in spec:
            kwargs["default"] = _literal(spec["default"])
        if "required" in spec:
            kwargs["required"] = _literal(spec["required"])
        if (rel_path, names[-1]) in CHOICES:
            kwargs["choices"] = CHOICES[(rel_path, names[-1])]
        parser.add_argument(*names, **kwargs)
    return parser


def dist_info():
    # same rule as nanochat.common.get_dist_info: DDP only when all three torchrun variables exist
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def _matches(knob, script, qualifier):
    for item in os.environ.get(knob, "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, qual = item.partition(":")
        if name.split(".")[-1] == script and (not qual or qual == qualifier):
            return item
    return None


class Ctx:
    """Everything a fake script needs: pin, args, rank info, printing and knobs."""

    def __init__(self, pin, rel_path, args):
        self.pin, self.rel_path, self.args = pin, rel_path, args
        self.module = rel_path[:-3].replace("/", ".")
        self.script = self.module.split(".")[-1]
        self.seed = pin["name"] == "seed"
        self.ddp, self.rank, self.local_rank, self.world_size = dist_info()
        self.master = self.rank == 0
        self.lines = 0
        self.qualifier = None  # e.g. chat_eval's -i source, used by FAIL/HANG "name:qualifier"

    def print0(self, text="", **kwargs):
        """nanochat's print0: only rank 0 prints. The first line may trigger the HANG knob."""
        if self.master:
            print(text, flush=True, **kwargs)
        self.lines += 1
        if self.lines == 1:
            self.maybe_hang()

    def log(self, logger, message):
        """nanochat's logging: colored level name on stderr (ColoredFormatter)."""
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        message = re.sub(r"(\d+\.?\d*\s*(?:GB|MB|%|docs))", "\033[1m\\1\033[0m", message)
        print(f"{stamp} - {logger} - \033[32m\033[1mINFO\033[0m - {message}", file=sys.stderr, flush=True)

    def maybe_hang(self):
        if getattr(self, "_hung", False):
            return  # once per process
        self._hung = True
        if _matches("NANOCHAT_DOUBLE_HANG", self.script, self.qualifier):
            sys.stdout.flush()
            time.sleep(env_float("NANOCHAT_DOUBLE_HANG_SEC", 30.0))  # silent, then carry on normally

    def fail_point(self, what="injected failure"):
        """Raise (traceback, exit 1) when NANOCHAT_DOUBLE_FAIL names this script."""
        item = _matches("NANOCHAT_DOUBLE_FAIL", self.script, self.qualifier)
        if item:
            sys.stdout.flush()
            raise RuntimeError(f"[nanochat double] {what} (NANOCHAT_DOUBLE_FAIL={item})")

    def step_sleep(self):
        seconds = env_float("NANOCHAT_DOUBLE_STEP_SEC", 0.0)
        if seconds > 0:
            time.sleep(seconds)
        return seconds

    def max_steps(self):
        return int(env_float("NANOCHAT_DOUBLE_MAX_STEPS", 20))

    def device_type(self, requested=""):
        # nanochat autodetects cuda, then mps, then cpu from what torch finds; the double takes what torch would
        # find from NANOCHAT_DOUBLE_DEVICE (default: cuda, the GPU box the runner targets).
        if requested:
            return requested
        device = os.environ.get("NANOCHAT_DOUBLE_DEVICE", "cuda")
        self.print0(f"Autodetected device type: {device}")
        if device != "cuda" and self.world_size > 1:
            # nanochat starts a process group only on CUDA: several ranks would each train alone.
            raise SystemExit(f"the {device} device runs one process; launch with python -m, not torchrun ({self.world_size} ranks)")
        return device

    def compute_init(self, requested=""):
        device = self.device_type(requested)
        if self.ddp and device == "cuda":
            self.join_process_group()
        if self.master:
            self.log("nanochat.common", f"Distributed world size: {self.world_size}")
        return device

    def join_process_group(self):
        """nanochat starts one NCCL process group over every rank of every node; the double starts it with gloo (its
        ranks run on CPU) at torchrun's MASTER_ADDR/MASTER_PORT and proves it with one all-reduce: each rank adds 1,
        so every rank must read the world size back."""
        if getattr(self, "_group", False):
            return
        import atexit
        import datetime as dt

        import torch
        import torch.distributed as dist

        timeout = dt.timedelta(seconds=env_float("NANOCHAT_DOUBLE_DIST_TIMEOUT_SEC", 120.0))
        dist.init_process_group("gloo", timeout=timeout)
        total = torch.ones(1)
        dist.all_reduce(total)
        if int(total.item()) != self.world_size:
            raise RuntimeError(f"[nanochat double] all-reduce summed {total.item()} over a world of {self.world_size}")
        self.print0(f"[nanochat double] process group: all-reduce over {int(total.item())} ranks (gloo), world size {dist.get_world_size()}")
        atexit.register(dist.destroy_process_group)
        self._group = True

    def compute_dtype_line(self):
        """latest's nanochat.common picks the dtype at import; a bad NANOCHAT_DTYPE is a KeyError there."""
        dtype = os.environ.get("NANOCHAT_DTYPE")
        if dtype is not None and dtype not in ("bfloat16", "float16", "float32"):
            raise KeyError(dtype)
        reason = f"set via NANOCHAT_DTYPE={dtype}" if dtype else "auto-detected: CUDA SM 90 (bf16 supported)"
        return f"COMPUTE_DTYPE: torch.{dtype or 'bfloat16'} ({reason})"

    def wandb_init(self, run, project):
        """wandb.init stand-in: a real run name needs an API key unless wandb is offline/disabled."""
        if run == "dummy" or not self.master:
            return
        mode = os.environ.get("WANDB_MODE", "").lower()
        if mode in ("offline", "disabled", "dryrun"):
            print(f"wandb: Tracking run with wandb version 0.0.0-double (mode={mode}) project={project} name={run}",
                  file=sys.stderr, flush=True)
        elif os.environ.get("WANDB_API_KEY"):
            print(f"wandb: Syncing run {run} (test double: nothing is sent)", file=sys.stderr, flush=True)
        else:
            raise UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")


def _log_call(rel_path, argv, present):
    path = os.environ.get("NANOCHAT_DOUBLE_CALLS")
    if not path:
        return
    _, rank, local_rank, world_size = dist_info()
    record = {
        "script": rel_path[:-3].split("/")[-1], "module": rel_path[:-3].replace("/", "."), "argv": argv,
        "rank": rank, "local_rank": local_rank, "world_size": world_size, "cwd": os.getcwd(),
        "pid": os.getpid(), "time": time.time(), "commit": selected_commit(), "exists_at_pin": present,
        "env": {k: os.environ.get(k) for k in CALL_ENV},
    }
    record["env"].update({f"{k}_present": bool(os.environ.get(k)) for k in SECRET_ENV})
    line = (json.dumps(record) + "\n").encode("utf-8")
    # one O_APPEND write per line so concurrent ranks do not interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def start(rel_path, parse=True, parser=None, description=None):
    """Entry point of every fake module. rel_path is e.g. 'scripts/base_train.py'."""
    try:
        sys.stdout.reconfigure(line_buffering=True)  # logs must reach a pipe promptly
    except AttributeError:
        pass
    pin = load_pin()
    present = rel_path in pin["modules"]
    _log_call(rel_path, sys.argv[1:], present)
    if not present:
        # exactly what `python -m pkg.mod` prints for a module that does not exist
        sys.stderr.write(f"{sys.executable}: No module named {rel_path[:-3].replace('/', '.')}\n")
        sys.exit(1)
    args = None
    if parse:
        parser = parser or build_parser(rel_path, pin["flags"].get(rel_path, {}), description)
        args = parser.parse_args()
    ctx = Ctx(pin, rel_path, args)
    ctx.parser = parser  # for scripts that call parser.error() after parsing, as base_eval does
    return ctx
