"""Benchmark: staging shard-sized files between S3 and local disk with the node agent's code, against s5cmd and
`aws s3 cp --recursive` in the same run, and the training-loop stall while a checkpoint uploads.

Prints MB/s and ratios; asserts nothing (targets: ≥ 0.9× s5cmd each way; < 2% stall). Run it with
`bash tests/bench/run.sh`. Everything runs against a SeaweedFS server on 127.0.0.1, restarted between the heavy
runs because its memory grows under multipart load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.storage import open_storage
from runner.transfer import SyncState, pull, push
from tests.harness import base_env, make_double, preseed_files, runner, smoke_plan, write_shards
from tests.infra.seaweedfs import SeaweedFS


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def renice_server(server: SeaweedFS) -> None:
    """The S3 server stands in for a remote service: give its threads the lowest CPU priority so that on a small
    machine the figures show what the runner costs the trainer, not what the local server does."""
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), 19)
        except OSError:
            pass


def fresh_bucket(server: SeaweedFS, name: str) -> str:
    server.boto3_client().create_bucket(Bucket=name)
    return f"s3://{name}/bench"


def run_tools(server: SeaweedFS, src: Path, work: Path, total: int, label: str) -> dict[str, tuple[float, float]]:
    """{tool: (upload MB/s, download MB/s)} for the runner, s5cmd and the AWS CLI, on one server."""
    env = dict(os.environ, **server.env())
    os.environ.update(server.env())
    results = {}

    url = fresh_bucket(server, f"runner-{label}")
    storage = open_storage(url)
    up = timed(lambda: push(storage, src, "base_data", SyncState(work / "state-up"), log=lambda *_: None))
    dst = work / "runner-down"
    down = timed(lambda: pull(storage, "base_data", dst, SyncState(work / "state-down"), log=lambda *_: None))
    results["runner (node agent)"] = (total / 1e6 / up, total / 1e6 / down)
    shutil.rmtree(dst)

    for tool, up_cmd, down_cmd in [
        ("s5cmd", ["s5cmd", "--endpoint-url", server.endpoint_url, "cp", f"{src}/*", "{url}/base_data/"],
         ["s5cmd", "--endpoint-url", server.endpoint_url, "cp", "{url}/base_data/*", "{dst}/"]),
        ("aws s3 cp --recursive", ["aws", "--endpoint-url", server.endpoint_url, "s3", "cp", "--recursive", "--quiet", str(src), "{url}/base_data/"],
         ["aws", "--endpoint-url", server.endpoint_url, "s3", "cp", "--recursive", "--quiet", "{url}/base_data/", "{dst}/"]),
    ]:
        if not shutil.which(tool.split()[0]):
            print(f"  ({tool} not found: skipped; tests/bench/run.sh installs it)")
            continue
        url = fresh_bucket(server, re.sub(r"[^a-z0-9]", "", tool)[:20] + f"-{label}")
        dst = work / f"{tool.split()[0]}-down"
        dst.mkdir()
        fill = {"url": url, "dst": str(dst)}
        up = timed(lambda: subprocess.run([a.format(**fill) for a in up_cmd], env=env, check=True, capture_output=True))
        down = timed(lambda: subprocess.run([a.format(**fill) for a in down_cmd], env=env, check=True, capture_output=True))
        results[tool] = (total / 1e6 / up, total / 1e6 / down)
        shutil.rmtree(dst)
    return results


def staging(files: int, mb: int, repeats: int) -> None:
    print(f"staging {files} files x {mb} MB = {files * mb / 1024:.1f} GiB, SeaweedFS on 127.0.0.1, {repeats} repetition(s)")
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        src = work / "src"
        total = sum(write_shards(src, files, mb).values())
        for i in range(repeats):
            with SeaweedFS(work / f"weed-{i}") as server:  # a fresh server each time: its memory grows under load
                for tool, speeds in run_tools(server, src, work, total, str(i)).items():
                    rows.setdefault(tool, []).append(speeds)
    medians = {tool: (statistics.median(u for u, _ in s), statistics.median(d for _, d in s)) for tool, s in rows.items()}
    base = medians.get("s5cmd")
    print(f"{'tool':<24}{'upload MB/s':>14}{'download MB/s':>16}{'up vs s5cmd':>14}{'down vs s5cmd':>16}")
    for tool, (up, down) in medians.items():
        ratio = f"{up / base[0]:>13.2f}x{down / base[1]:>15.2f}x" if base else ""
        print(f"{tool:<24}{up:>14.0f}{down:>16.0f}{ratio}")


DT = re.compile(r"^step (\d+)/\d+ .*\| dt: ([0-9.]+)ms")


def step_times(log: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for line in log.splitlines() if (m := DT.match(line))}


def stall(steps: int, ckpt_mb: int, save_every: int, work_mb: int) -> None:
    """The test double's base_train doing a fixed amount of CPU work per step (so its measured dt grows when
    anything else takes the CPU): run directly (no runner, no upload) vs through the node agent uploading a
    checkpoint of 2 × ckpt_mb to S3 every `save_every` steps. Compares the mean step time."""
    print(f"\ntraining-loop stall: {steps} steps of {work_mb} MB of hashing each, a {2 * ckpt_mb} MB checkpoint every {save_every} steps")
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp, SeaweedFS(Path(tmp) / "weed") as server:
        renice_server(server)
        work = Path(tmp)
        os.environ.update(server.env())
        url = fresh_bucket(server, "stall")
        seeded = work / "seeded"
        preseed_files(seeded)
        plan = smoke_plan(work, iterations=steps, save_every=save_every)
        plan_data = json.loads(plan.read_text())
        double = make_double(work)
        env = base_env(work, dict(server.env(), NANOCHAT_DOUBLE_STEP_CPU_MB=str(work_mb), NANOCHAT_DOUBLE_CKPT_MB=str(ckpt_mb)))
        common = ["node", "run", "--plan", str(plan), "--storage", url, "--nanochat-dir", str(double), "--python", sys.executable]
        storage = open_storage(url)
        push(storage, seeded, "", SyncState(work / "seed-state"), log=lambda *_: None)
        for phase in ("data", "tokenizer"):
            assert runner([*common, "--only", phase], env).code == 0
        argv = next(s for p in plan_data["phases"] for s in p["steps"] if s["name"] == "base_train")["args"]
        base_dir = work / "scratch" / "base"
        shutil.copytree(seeded / "eval_bundle", base_dir / "eval_bundle", dirs_exist_ok=True)  # the node stages it for base
        direct = subprocess.run([sys.executable, "-m", "scripts.base_train", *argv], cwd=double, check=True, capture_output=True, text=True,
                                env=dict(env, NANOCHAT_BASE_DIR=str(base_dir)))
        shutil.rmtree(base_dir / "base_checkpoints", ignore_errors=True)
        result = runner([*common, "--only", "base"], env)
        assert result.code == 0, result.output[-2000:]
        alone, uploading = step_times(direct.stdout), step_times(result.output)
        status = json.loads(storage.read_text(f"_runner/runs/{plan_data['run_id']}/status.json"))
        uploaded = status["phases"]["base"]["steps"]["base_train"].get("checkpoints_uploaded", [])
        # Steps right after a checkpoint are the ones that ran while it uploaded.
        near = [dt for step, dt in uploading.items() if any(0 < step - c <= save_every // 2 for c in uploaded)]
        far = [dt for step, dt in uploading.items() if not any(0 < step - c <= save_every // 2 for c in uploaded)]
        a, b = statistics.mean(alone.values()), statistics.mean(uploading.values())
        n, f = statistics.mean(near) if near else float("nan"), statistics.mean(far) if far else float("nan")
        print(f"  mean step: {a:.1f} ms run directly; through the node agent {b:.1f} ms ({100 * (b - a) / a:+.1f}%) with {len(uploaded)} uploads")
        print(f"  through the node agent: {n:.1f} ms in the {save_every // 2} steps after each checkpoint (uploading) vs {f:.1f} ms in the "
              f"others: stall while uploading {100 * (n - f) / f:+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stall-steps", type=int, default=400)
    parser.add_argument("--stall-ckpt-mb", type=int, default=100)
    parser.add_argument("--stall-work-mb", type=int, default=64, help="CPU work per step (MB hashed)")
    parser.add_argument("--only", choices=["staging", "stall"], default=None, help="run one of the two benchmarks")
    args = parser.parse_args()
    if args.only == "stall":
        stall(args.stall_steps, args.stall_ckpt_mb, save_every=50, work_mb=args.stall_work_mb)
        return
    staging(args.files, args.mb, args.repeats)
    if args.only == "staging":
        return
    stall(args.stall_steps, args.stall_ckpt_mb, save_every=50, work_mb=args.stall_work_mb)


if __name__ == "__main__":
    main()
