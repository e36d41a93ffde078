"""`runner up --backend ssh --host A --host B --nodes 2`: one run on several hosts. The dry run shows every host's
node agent with the same rendezvous (the first host leads); the count of hosts must match the plan's nodes; one
handle names every host; and every host is preflighted before anything is installed on any (real sshd, two names of
127.0.0.1)."""

from __future__ import annotations

import pytest
from harness import base_env, runner

from backends.ssh_conn import Target
from backends.ssh_hosts import followers_in, group_handle


def test_the_dry_run_starts_every_host_with_the_same_rendezvous(tmp_path):
    result = runner(["up", "--backend", "ssh", "--host", "ubuntu@10.0.0.1", "--host", "ubuntu@10.0.0.2:2222", "--nodes", "2",
                     "--gpus", "8", "--master-port", "29400", "--storage", "s3://bucket/runs", "--run-id", "two", "--dry-run"], base_env(tmp_path))
    assert result.code == 0, result.output
    out = result.output
    assert "2 nodes × 8 GPU(s): world size 16; leader and torchrun master 10.0.0.1:29400" in out
    launch = out.split("--launch-id ")[1].split("`")[0]
    assert "node 0 (leader): ubuntu@10.0.0.1:22" in out and "node 1 (follower): ubuntu@10.0.0.2:2222" in out
    for rank, folder in ((0, "two"), (1, "two.node1")):
        assert (f"runner node run --storage s3://bucket/runs --run-id two --nnodes 2 --node-rank {rank} --master 10.0.0.1:29400 "
                f"--launch-id {launch}` detached, in ~/.nanochat-runner/runs/{folder}/") in out
    assert "handle: ssh://ubuntu@10.0.0.1:22/two?node=ubuntu@10.0.0.2:2222" in out


@pytest.mark.parametrize("hosts, nodes, message", [
    (["u@a", "u@b"], [], "2 hosts were given, but the plan is for one node"),
    (["u@a"], ["--nodes", "2"], "The plan is for 2 nodes, but 1 host(s) were given"),
])
def test_hosts_and_nodes_must_agree(tmp_path, hosts, nodes, message):
    args = ["up", "--backend", "ssh", *[a for h in hosts for a in ("--host", h)], *nodes, "--gpus", "8", "--storage", "s3://b-1/x", "--dry-run"]
    result = runner(args, base_env(tmp_path))
    assert result.code == 1 and message in result.output and "To fix:" in result.output, result.output


def test_one_handle_names_every_host_with_the_leaders_key():
    targets = [Target("u", "10.0.0.1", 22, "/keys/id"), Target("v", "10.0.0.2", 2222, None), Target("u", "10.0.0.3", 22, None)]
    handle = group_handle(targets, "run-1")
    assert handle == "ssh://u@10.0.0.1:22/run-1?identity=/keys/id&node=v@10.0.0.2:2222&node=u@10.0.0.3:22"
    assert followers_in(handle) == [Target("v", "10.0.0.2", 2222, "/keys/id"), Target("u", "10.0.0.3", 22, "/keys/id")]
    assert followers_in(Target("u", "h", 22).url("one-host")) == []


@pytest.mark.ssh
def test_every_host_is_preflighted_before_anything_is_installed(ssh_host, ssh_install_inputs, tmp_path):
    from test_backend_ssh import laptop_env, runner_home_listing, up_args

    # The second host is this machine under another name, whose key is not trusted yet: the first host passes its
    # checks, the second stops the run, and neither got anything installed.
    args = up_args(ssh_host, ssh_install_inputs, "s3://b-1/x", "two-hosts", "--host", f"{ssh_host.user}@localhost:{ssh_host.port}", "--nodes", "2")
    before = runner_home_listing(ssh_host)
    result = runner(args, laptop_env(ssh_host))
    assert result.code == 1, result.output
    assert f"preflight: logged in to {ssh_host.user}@127.0.0.1:{ssh_host.port}" in result.output
    assert "preflight: GPUs: 8 × NVIDIA H100" in result.output
    assert f"The host key of [localhost]:{ssh_host.port} is not in" in result.output
    assert "install:" not in result.output and "started run" not in result.output
    assert runner_home_listing(ssh_host) == before


@pytest.mark.ssh
def test_two_hosts_run_one_launch_under_one_handle(ssh_host, ssh_install_inputs, tmp_path):
    """Two names of this machine as two hosts, a shared folder as storage, the 2-node smoke plan's CPU phases (the
    GPU phases need torch on the host; test_multinode.py runs those with two local agents): both hosts start, the
    follower meets the leader through storage and ends with it, and one handle reads and removes both."""
    import json

    from test_backend_ssh import host_folder, laptop_env, up_args
    from tests.infra.sshd import free_port

    plan = json.loads(runner(["plan", "--smoke", "--nodes", "2", "--device", "cuda", "--json"], base_env(tmp_path)).output)
    plan["phases"] = [p for p in plan["phases"] if p["name"] in ("data", "tokenizer")]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    known = tmp_path / "known_hosts"  # the one server's key, trusted under both of its names
    line = ssh_host.known_hosts.read_text().strip()
    known.write_text(f"{line}\n{line.replace('[127.0.0.1]', '[localhost]', 1)}\n")
    env = laptop_env(ssh_host, {"RUNNER_SSH_KNOWN_HOSTS": str(known)})
    host_folder(ssh_host, "storage-two")
    second = f"{ssh_host.user}@localhost:{ssh_host.port}"
    args = up_args(ssh_host, ssh_install_inputs, "storage-two", "two-hosts", "--host", second, "--plan", str(tmp_path / "plan.json"),
                   "--master-port", str(free_port()))
    up = runner(args, env)
    assert up.code == 0, up.output
    group = f"ssh://{ssh_host.user}@127.0.0.1:{ssh_host.port}/two-hosts?identity={ssh_host.client_key}&node={second}"
    assert f"started run two-hosts: {group}" in up.output and "run two-hosts: succeeded (exit 0)" in up.output
    assert "this agent: node 0 of 2 (leader)" in up.output
    follower_log = (ssh_host.home / ".nanochat-runner/runs/two-hosts.node1/output.log").read_text()
    assert "node 1 of 2 (follower)" in follower_log and "the leader ended launch" in follower_log and "succeeded (exit code 0)" in follower_log
    status = runner(["status", group], env)
    assert "succeeded" in status.output and "node 0: succeeded" in status.output and "node 1: succeeded" in status.output, status.output
    down = runner(["down", group], env)
    assert down.code == 0, down.output
    assert not (ssh_host.home / ".nanochat-runner/runs/two-hosts").exists()
    assert not (ssh_host.home / ".nanochat-runner/runs/two-hosts.node1").exists()
