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
