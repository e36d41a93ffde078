"""Docker mode of the SSH backend: the same image as the local backend, on the host's own engine.

The image is one already there (`--image TAG`, e.g. loaded with `docker save TAG | ssh HOST docker load`) or
built there from this checkout's Dockerfile (the context is uploaded). A throwaway container with the run's GPU
request proves the engine can give GPUs, as the local backend's probe does. The run is `docker run -i --rm`
started by the run's detached wrapper (ssh_remote.py), which pipes the node's environment into it: nothing
secret is in the container's config on the host.
"""

from __future__ import annotations

from . import local_image, preflight
from .base import Log, PreflightError, RunSpec
from .ssh_conn import Connection, q
from .ssh_remote import CONTAINER_ENV_READER

CONTAINER_STORAGE, CONTAINER_SCRATCH = "/storage", "/scratch"


def gpus_flag(spec: RunSpec) -> str:
    ids = (spec.gpu_ids or "").strip()
    return "all" if ids == "all" else (f'"device={ids}"' if ids else str(spec.plan.gpus))


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
    script = f"docker run --rm --network none --gpus={q(gpus_flag(spec))} --entrypoint /bin/sh {q(image)} -c {q(preflight.PROBE_SCRIPT)}"
    code, out = conn.script(script, timeout=300)
    # 125: docker itself could not run the container (no NVIDIA driver in the engine, an unknown device...).
    wanted = None if (spec.gpu_ids or "").strip() == "all" else spec.plan.gpus
    return preflight.probe_verdict("" if code == 125 else out, code, out if code == 125 else "", wanted)


def run_argv(spec: RunSpec, image: str, facts, node_args: list[str]) -> list[str]:
    """`docker run -i ...` for the run's wrapper; `node_args` name CONTAINER_STORAGE for a host folder."""
    argv = ["docker", "run", "-i", "--rm", "--name", f"nanochat-{spec.run_id}", "--init", "--ipc=host",
            f"--gpus={gpus_flag(spec)}", f"--label=org.nanochat-runner.run-id={spec.run_id}"]
    if "storage" in facts.paths:
        argv.append(f"--volume={facts.paths['storage']}:{CONTAINER_STORAGE}")
    else:  # s3:// passes through
        node_args = [spec.storage if a == CONTAINER_STORAGE else a for a in node_args]
    if spec.scratch:
        argv.append(f"--volume={facts.paths['scratch']}:{CONTAINER_SCRATCH}")
    if "storage" in facts.paths or spec.scratch:
        argv.append(f"--user={facts.uid}:{facts.gid}")  # files in host folders belong to the SSH user
    # Host networking: the run is the GPU host's one tenant, so the bridge's NAT buys no isolation and costs CPU at
    # the GB/s of shard and checkpoint traffic; an S3 endpoint on the host's loopback is reachable; and rented
    # hosts whose Docker runs without iptables (or with docker0 missing) still work.
    argv.append("--network=host")
    return [*argv, "--entrypoint", "/bin/bash", image, "-c", CONTAINER_ENV_READER, "nanochat-node", *node_args]
