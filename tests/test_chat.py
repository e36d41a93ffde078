"""`runner chat`: nanochat's chat CLI and web UI against a run's final checkpoint, staged from storage.
The web UI served by the test double is loaded in headless Chromium, as a user's browser would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from harness import REPO, base_env, make_double, node_run, pid_alive, preseed_files, read_calls, runner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    storage, double = tmp / "storage", make_double(tmp)
    preseed_files(storage)
    assert node_run(str(storage), double, base_env(tmp)).code == 0
    return tmp, storage, double


def chat_args(storage, double, tmp, *extra):
    return ["chat", "test-run", "--storage", str(storage), "--nanochat-dir", str(double), "--python", sys.executable,
            "--scratch", str(tmp / "chat-scratch"), *extra]


def test_one_prompt_runs_nanochat_chat_cli_on_the_sft_model(trained):
    tmp, storage, double = trained
    result = runner(chat_args(storage, double, tmp, "-p", "Why is the sky blue?"), base_env(tmp))
    assert result.code == 0, result.output
    assert "chatting with the sft model of run test-run (checkpoint step 10, smoke)" in result.output
    call = read_calls(tmp / "calls.jsonl")[-1]
    assert call["module"] == "scripts.chat_cli" and call["argv"] == ["-i", "sft", "-g", "d4", "-p", "Why is the sky blue?"]


def test_asking_for_a_missing_source_says_which_exist(trained):
    tmp, storage, double = trained
    result = runner(chat_args(storage, double, tmp, "--source", "rl", "-p", "hi"), base_env(tmp))
    assert result.code == 1 and "no complete rl checkpoint" in result.output and "sft" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_ui_is_served_on_loopback_and_renders_in_chromium(trained):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `bash tests/run.sh`, which installs it", pytrace=False)
    tmp, storage, double = trained
    port = free_port()
    args = [sys.executable, "-m", "runner.cli", *chat_args(storage, double, tmp, "--web", "--port", str(port))]
    server = subprocess.Popen(args, env=base_env(tmp), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert "<title>NanoChat</title>" in response.read().decode()
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the web UI did not come up"
                time.sleep(0.2)
        profile = tmp / "chromium-profile"
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert "<title>NanoChat</title>" in dom.stdout, dom.stderr[-2000:]
        assert "chat" in dom.stdout.lower()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    web = [c for c in read_calls(tmp / "calls.jsonl") if c["module"] == "scripts.chat_web"][-1]
    assert web["argv"] == ["-i", "sft", "-g", "d4", "--host", "127.0.0.1", "-p", str(port)]
    deadline = time.monotonic() + 20  # stopping `runner chat` stops the web server it started
    while pid_alive(web["pid"]):
        assert time.monotonic() < deadline, "chat_web outlived runner chat"
        time.sleep(0.1)
