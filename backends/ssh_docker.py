"""Docker mode of the SSH backend: the same image as the local backend, on the host's own engine.

The image is one already there (`--image TAG`, e.g. loaded with `docker save TAG | ssh HOST docker load`) or
built there from this checkout's Dockerfile (the context is uploaded). A throwaway container with the run's GPU
request proves the engine can give GPUs, as the local backend's probe does. The run is `docker run -i --rm`
started by the run's detached wrapper (detached.py), which pipes the node's environment into it: nothing
secret is in the container's config on the host.
"""

from __future__ import annotations

from . import local_image, preflight
from .base import Log, PreflightError, RunSpec
from .launch import ContainerLaunch, GpuRequest, Mount, NodeCommand, docker_run_argv
from .ssh_conn import Connection, q
from .detached import CONTAINER_ENV_READER

CONTAINER_STORAGE, CONTAINER_SCRATCH = "/storage", "/scratch"


def ensure_image(conn: Connection, spec: RunSpec, log: Log) -> str:
    """The image on the host's engine with the plan's nanochat commit: found, or built there from a context."""
    tag = spec.image or local_image.default_tag(spec.plan)
    inspect = f"docker image inspect --format '{{{{index .Config.Labels \"{local_image.COMMIT_LABEL}\"}}}}' {q(tag)}"
    code, out = conn.script(inspect, timeout=60)
    if code or spec.rebuild:
        context = local_image.find_context(spec.build_context)
        _, home = conn.script('printf %s "$HOME"', timeout=30)
        remote = f"{home}/.nanochat-runner/tmp/build-{spec.run_id}"
        log(f"preflight: building image {tag} on {conn.target} from {context} (nanochat {spec.plan.commit[:7]})")
        conn.script(f"rm -rf {q(remote)}", timeout=120)
        conn.upload({p.name: p for p in sorted(context.iterdir()) if p.name not in (".git", ".venv", "storage", ".pytest_cache")}, remote)
        args = " ".join("--build-arg " + q(f"{k}={v}") for k, v in {"NANOCHAT_REF": spec.plan.commit, **spec.build_args}.items())
        code, out = conn.script(f"docker build -t {q(tag)} {args} {q(remote)}; code=$?; rm -rf {q(remote)}; exit $code", timeout=7200)
        for line in out.splitlines()[-15:]:
            log(f"build: {line}")
        if code:
            raise PreflightError(f"Building {tag} on {conn.target} failed (exit {code}); the output is above.",
                                 ["Fix what the build reports, or load a ready image there (`docker save TAG | ssh HOST docker load`) "
                                  "and pass --image TAG, or use --mode bare."])
        code, out = conn.script(inspect, timeout=60)
    commit = out.strip()
    if commit and not (commit.startswith(spec.plan.commit[:7]) or spec.plan.commit.startswith(commit)):
        raise PreflightError(f"Image {tag} on {conn.target} holds nanochat {commit[:7]}, but the plan needs {spec.plan.commit[:7]}.",
                             ["Leave out --image to build the plan's image there, or pass --rebuild, or use a plan of that recipe."])
    log(f"preflight: image {tag} on the host: nanochat {commit[:7] or '(no label; the node agent checks it)'}")
    return tag


def probe_gpus(conn: Connection, spec: RunSpec, image: str) -> str:
    """A throwaway container with the run's GPU request on the host: the real test that its engine can do it."""
    script = f"docker run --rm --network none --gpus={q(GpuRequest.parse(spec.gpu_ids, spec.plan.gpus).docker_flag())} --entrypoint /bin/sh {q(image)} -c {q(preflight.PROBE_SCRIPT)}"
    code, out = conn.script(script, timeout=300)
    # 125: docker itself could not run the container (no NVIDIA driver in the engine, an unknown device...).
    wanted = None if (spec.gpu_ids or "").strip() == "all" else spec.plan.gpus
    return preflight.probe_verdict("" if code == 125 else out, code, out if code == 125 else "", wanted)


def container_launch(spec: RunSpec, image: str, facts, node: NodeCommand) -> ContainerLaunch:
    """The run's container on the host: a host folder for storage (and scratch) is mounted and written as the SSH
    user; s3:// passes through."""
    mounts, storage = [], spec.storage
    if "storage" in facts.paths:
        mounts.append(Mount(facts.paths["storage"], CONTAINER_STORAGE))
        storage = CONTAINER_STORAGE
    if spec.scratch:
        mounts.append(Mount(facts.paths["scratch"], CONTAINER_SCRATCH))
    return ContainerLaunch(
        image=image, args=tuple(node.with_(storage=storage).argv()), name=f"nanochat-{spec.run_id}",
        gpus=GpuRequest.parse(spec.gpu_ids, spec.plan.gpus), mounts=tuple(mounts),
        user=f"{facts.uid}:{facts.gid}" if mounts else None,  # files in host folders belong to the SSH user
        # Host networking: the run is the GPU host's one tenant, so the bridge's NAT buys no isolation and costs CPU
        # at the GB/s of shard and checkpoint traffic; an S3 endpoint on the host's loopback is reachable; and rented
        # hosts whose Docker runs without iptables (or with docker0 missing) still work.
        network="host", labels={"org.nanochat-runner.run-id": spec.run_id},
    )


def run_argv(launch: ContainerLaunch) -> list[str]:
    """`docker run -i --rm ...` for the run's wrapper, which pipes the node's environment in through stdin."""
    return docker_run_argv(launch, run_flags=("-i", "--rm"), wrapper=("/bin/bash", "-c", CONTAINER_ENV_READER, "nanochat-node"))
