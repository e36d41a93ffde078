"""The SSH backend in bare mode against a real sshd on 127.0.0.1 (conftest: ssh_host), with stand-in GPUs.

The host is this machine, reached as a separate, key-authorized test user: `runner up --backend ssh` installs uv,
the nanochat test double (uploaded with --nanochat-src) and the runner from an uploaded wheelhouse (nothing on
the host downloads), then runs the smoke plan detached. The tests cut the SSH link mid-run, reattach, stop a run,
and check that host-key, login and GPU problems stop everything before anything is installed, and that the S3
credentials reach the run without appearing in any file or process list on the host.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from harness import REPO, preseed_files, seed_s3
from tests.infra.image import TIMINGS  # printed at the end of the session (conftest)

pytestmark = pytest.mark.ssh

RUN_TIMEOUT_SEC = 300


def laptop_env(host, extra: dict | None = None) -> dict:
    """The environment of `runner` on the laptop: no stray AWS_*/RUNNER_*, known_hosts with the test host's key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANDB_", "RUNNER_", "NANOCHAT_DOUBLE"))}
    env.update(host.env(), PYTHONPATH=str(REPO))
    env.update(extra or {})
    return env


def runner(env: dict, *args: str, timeout: float = RUN_TIMEOUT_SEC) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def up_args(host, inputs, storage: str, run_id: str, *extra: str) -> list[str]:
    src, wheels = inputs
    return ["up", "--backend", "ssh", "--host", host.target, "--identity", str(host.client_key), "--smoke",
            "--storage", storage, "--run-id", run_id, "--heartbeat-sec", "30", "--nanochat-src", str(src),
            "--wheelhouse", str(wheels), *extra]


def handle(host, run_id: str) -> str:
    return f"ssh://{host.user}@127.0.0.1:{host.port}/{run_id}?identity={host.client_key}"


def seed_bucket(bucket, tmp_path: Path) -> None:
    """Every pre-seed item in the bucket, so the run on the host touches no network but the S3 server."""
    seed_s3(bucket.url, bucket.storage_options, tmp_path)


def host_folder(host, name: str) -> Path:
    """A pre-seeded storage folder in the test user's home, owned by that user."""
    folder = host.home / name
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    preseed_files(folder)
    user = pwd.getpwnam(host.user)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(folder)], check=True)
    return folder


def runner_home_listing(host) -> list[str]:
    root = host.home / ".nanochat-runner"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*")) if root.exists() else []


def grep_host_files(host, secret: str) -> list[str]:
    """Files of the test user (its home, /tmp, /var/tmp, /dev/shm) that contain `secret`. Only the user's own:
    this machine is also the laptop, whose files (checkouts, the S3 server's config) may hold the same test key."""
    listed = subprocess.run(["find", str(host.home), "/tmp", "/var/tmp", "/dev/shm", "-xdev", "-type", "f", "-user", host.user],
                            capture_output=True, text=True, timeout=120).stdout.split("\n")
    files = [f for f in listed if f]
    assert any(f.endswith("output.log") for f in files) or not files, files[:20]
    found = []
    for f in files:
        try:
            if secret.encode() in Path(f).read_bytes():
                found.append(f)
        except OSError:
            pass
    return found


@pytest.fixture(autouse=True)
def _clean_host(ssh_host):
    """Each test starts with 8 GPUs and no run processes of the test user, and leaves none behind."""
    ssh_host.set_gpus(8)
    yield
    ssh_host.set_gpus(8)
    ssh_host.kill_user_processes()


def test_bare_smoke_on_s3_to_success_and_a_second_up_installs_nothing(ssh_host, ssh_install_inputs, s3_bucket, tmp_path):
    seed_bucket(s3_bucket, tmp_path)
    env = laptop_env(ssh_host, s3_bucket.env)
    started = time.monotonic()
    first = runner(env, *up_args(ssh_host, ssh_install_inputs, s3_bucket.url, "ssh-smoke"))
    TIMINGS["bare: first runner up (install + smoke)"] = time.monotonic() - started
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "its host key matches known_hosts" in out
    assert "preflight: GPUs: 8 × NVIDIA H100 80GB HBM3 (80 GiB each), driver 570.124.06" in out
    assert "preflight: mode bare" in out
    assert "(offline, from the uploaded wheelhouse)" in out and "nanochat a1ccb3dc0b7095620751498b8652a6d6647d8c01 ready at" in out, out
    assert f"started run ssh-smoke: {handle(ssh_host, 'ssh-smoke')}" in out
    assert "run ssh-smoke: succeeded (exit 0)" in out
    fs = fsspec.filesystem("s3", **s3_bucket.storage_options)
    root = s3_bucket.url[5:]
    assert len(fs.glob(f"{root}/base_data/shard_*.parquet")) == 4
    assert fs.exists(f"{root}/tokenizer/tokenizer.pkl")
    assert fs.glob(f"{root}/base_checkpoints/d4/model_*.pt") and fs.glob(f"{root}/chatsft_checkpoints/d4/model_*.pt")
    assert fs.cat(f"{root}/report/report.md").strip()
    # The credentials went to the run through stdin: no file on the host holds them.
    assert grep_host_files(ssh_host, s3_bucket.env["AWS_SECRET_ACCESS_KEY"]) == []

    started = time.monotonic()
    second = runner(env, *up_args(ssh_host, ssh_install_inputs, s3_bucket.url, "ssh-smoke-2"))
    TIMINGS["bare: second runner up (installed, phases skipped)"] = time.monotonic() - started
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "install: nothing to do" in out and "uploaded" not in out
    assert "phase base: done" in out and "skipping" in out
    status = runner(env, "status", handle(ssh_host, "ssh-smoke-2"))
    assert "state:    succeeded (exit 0)" in status.stdout and "bare mode on" in status.stdout, status.stdout + status.stderr
    logs = runner(env, "logs", handle(ssh_host, "ssh-smoke-2"), "--tail", "5")
    assert logs.returncode == 0 and "report" in logs.stdout, logs.stdout + logs.stderr
    for run_id in ("ssh-smoke", "ssh-smoke-2"):
        down = runner(env, "down", handle(ssh_host, run_id))
        assert down.returncode == 0 and "succeeded" in down.stdout, down.stdout + down.stderr
    gone = runner(env, "status", handle(ssh_host, "ssh-smoke"))
    assert gone.returncode == 1 and "No run 'ssh-smoke'" in gone.stderr and "To fix:" in gone.stderr


def wait_for_line(proc: subprocess.Popen, prefix: str, seen: list[str]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting with {prefix!r}:\n" + "".join(seen[-80:]))


def test_ssh_link_cut_mid_run_the_run_goes_on_and_logs_f_reattaches(ssh_host, ssh_install_inputs, s3_bucket, tmp_path):
    seed_bucket(s3_bucket, tmp_path)
    env = laptop_env(ssh_host, s3_bucket.env)
    args = up_args(ssh_host, ssh_install_inputs, s3_bucket.url, "ssh-cut", "-e", "NANOCHAT_DOUBLE_STEP_SEC=0.3")
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        wait_for_line(proc, "step 00002/", seen)  # base_train is under way on the host
        # While it runs, no process on the host shows a credential in its command line.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert s3_bucket.env["AWS_SECRET_ACCESS_KEY"] not in ps and s3_bucket.env["AWS_ACCESS_KEY_ID"] not in ps
        # The laptop vanishes: SIGKILL, so the kernel drops its SSH connection with no goodbye.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    pid = ssh_host.ssh("cat ~/.nanochat-runner/runs/ssh-cut/wrapper.pid").stdout.strip()
    assert pid.isdigit()
    time.sleep(1)
    assert ssh_host.ssh(f"kill -0 {pid}").returncode == 0, "the run died with the SSH link"
    assert "state:    running" in runner(env, "status", handle(ssh_host, "ssh-cut")).stdout
    reattached = runner(env, "logs", "-f", handle(ssh_host, "ssh-cut"))
    assert reattached.returncode == 0, reattached.stdout + reattached.stderr
    assert "run ssh-cut finished" in reattached.stdout
    assert "run ssh-cut: succeeded (exit 0)" in reattached.stderr
    assert grep_host_files(ssh_host, s3_bucket.env["AWS_SECRET_ACCESS_KEY"]) == []
    assert runner(env, "down", handle(ssh_host, "ssh-cut")).returncode == 0


def test_down_stops_a_running_run_and_leaves_no_process(ssh_host, ssh_install_inputs):
    env = laptop_env(ssh_host)
    storage = host_folder(ssh_host, "storage-down")
    args = up_args(ssh_host, ssh_install_inputs, "storage-down", "ssh-down", "--detach", "-e", "NANOCHAT_DOUBLE_STEP_SEC=2")
    started = runner(env, *args)
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.strip() == handle(ssh_host, "ssh-down")
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while time.monotonic() < deadline and "step 00001/" not in runner(env, "logs", handle(ssh_host, "ssh-down")).stdout:
        time.sleep(1)
    assert any("runner node run" in p or "runner/" in p for p in ssh_host.user_processes())
    down = runner(env, "down", handle(ssh_host, "ssh-down"), "--grace", "30")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "cancelled (exit 130)" in down.stdout  # the node agent stopped its phase on SIGTERM
    time.sleep(0.5)
    assert ssh_host.user_processes() == []
    assert (storage / "_runner" / "runs" / "ssh-down" / "status.json").is_file()  # a plain path is a folder on the host


def test_an_unknown_host_key_is_refused_until_trusted(ssh_host, ssh_install_inputs, tmp_path):
    ssh_host.set_gpus(None)  # so the accepted connection stops at preflight, before anything is installed
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    env = laptop_env(ssh_host, {"RUNNER_SSH_KNOWN_HOSTS": str(empty)})
    before = runner_home_listing(ssh_host)
    refused = runner(env, *up_args(ssh_host, ssh_install_inputs, "storage", "unknown-key"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"The host key of [127.0.0.1]:{ssh_host.port} is not in {empty}: ssh-ed25519 SHA256:" in refused.stderr
    assert f"ssh-keyscan -p {ssh_host.port} -t ssh-ed25519 127.0.0.1 >> {empty}" in refused.stderr
    assert "--accept-new-host-key" in refused.stderr and "To fix:" in refused.stderr
    assert empty.read_text() == ""
    accepted = runner(env, *up_args(ssh_host, ssh_install_inputs, "storage", "unknown-key", "--accept-new-host-key"))
    assert "added the new host key of [127.0.0.1]:" in accepted.stderr
    assert empty.read_text().split()[1:] == ssh_host.known_hosts.read_text().split()[1:]
    assert accepted.returncode == 1 and "no nvidia-smi" in accepted.stderr
    assert runner_home_listing(ssh_host) == before


@pytest.mark.parametrize("problem", ["wrong key", "unreachable", "no nvidia-smi", "too few GPUs", "old driver"])
def test_problems_stop_before_anything_is_installed(problem, ssh_host, ssh_install_inputs, tmp_path):
    env = laptop_env(ssh_host)
    args = up_args(ssh_host, ssh_install_inputs, "storage", "broken")
    if problem == "wrong key":
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        args[args.index("--identity") + 1] = str(other)
        expected = ["refused the key", "ssh-copy-id"]
    elif problem == "unreachable":
        from tests.infra.sshd import free_port

        args[args.index("--host") + 1] = f"{ssh_host.user}@127.0.0.1:{free_port()}"
        expected = ["Cannot reach", "sshd runs"]
    elif problem == "no nvidia-smi":
        ssh_host.set_gpus(None)
        expected = ["has no nvidia-smi on the PATH", "Install the NVIDIA driver"]
    elif problem == "too few GPUs":
        ssh_host.set_gpus(4)
        args[args.index("--smoke")] = "--gpus=8"
        expected = ["The run needs 8 GPUs but", "has 4", "--gpus 4"]
    else:
        ssh_host.set_gpus(8, driver="550.54.15")
        expected = ["driver on", "is 550.54.15; CUDA 12.8", "570.26"]
    before = runner_home_listing(ssh_host)
    result = runner(env, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "To fix:" in result.stderr and "Traceback" not in result.stderr
    assert "install:" not in result.stderr and "started run" not in result.stderr
    assert runner_home_listing(ssh_host) == before


def test_up_without_a_host_and_a_handle_without_a_run(ssh_host):
    env = laptop_env(ssh_host)
    result = runner(env, "up", "--backend", "ssh", "--smoke", "--storage", "/data")
    assert result.returncode == 1 and "needs the host: --host USER@HOST[:PORT]" in result.stderr
    listed = runner(env, "status", f"ssh://{ssh_host.user}@127.0.0.1:{ssh_host.port}?identity={ssh_host.client_key}")
    assert listed.returncode == 1 and "names a host, not a run" in listed.stderr
    dry = runner(env, "up", "--backend", "ssh", "--host", ssh_host.target, "--smoke", "--storage", "s3://b-1/x", "--dry-run",
                 "-e", "HF_TOKEN=secret-value")
    assert dry.returncode == 0 and "HF_TOKEN" in dry.stdout and "secret-value" not in dry.stdout, dry.stdout + dry.stderr


def test_help_loads_no_ssh_library():
    code = ("import sys\nfrom runner.cli import main\nfor args in (['--help'], ['up', '--help']):\n    try:\n        main(args)\n"
            "    except SystemExit:\n        pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'cryptography', 'nacl', 'bcrypt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(REPO)).stdout
    assert out.strip().splitlines()[-1] == "[]"
