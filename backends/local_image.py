"""The image a local run uses: found on the engine, or built from this repository's Dockerfile.

The default tag names the nanochat commit (`nanochat-runner:nanochat-a1ccb3d`), so each recipe gets its own image
and an existing one is reused. Builds go through the Docker SDK, which uses the engine's classic builder, the
one every engine has; the Dockerfile is written for it (no BuildKit-only syntax).
"""

from __future__ import annotations

from pathlib import Path

from .base import BackendError, Log, PreflightError

COMMIT_LABEL = "org.nanochat-runner.nanochat-commit"
REPOSITORY = "nanochat-runner"


def default_tag(plan) -> str:
    return f"{REPOSITORY}:nanochat-{plan.commit[:7]}"


def find_context(explicit: str | None) -> Path:
    """The build context: --context, else the checkout this runner is installed from (editable installs)."""
    candidates = [Path(explicit).expanduser()] if explicit else [Path(__file__).resolve().parents[1], Path.cwd()]
    for folder in candidates:
        if (folder / "Dockerfile").is_file() and (folder / "docker").is_dir():
            return folder.resolve()
    where = explicit or " or ".join(str(c) for c in candidates)
    raise BackendError(
        f"The image is not on the engine and there is no nanochat-runner Dockerfile to build it from ({where}).",
        [
            "Run from a clone of nanochat-runner (`git clone ... && cd nanochat-runner && runner up ...`), or",
            "pass --context PATH to that clone, or --image TAG of an image you built with `docker build -t TAG .`.",
        ],
    )


def build(client, tag: str, context: Path, build_args: dict[str, str], log: Log) -> None:
    """Build `tag` from `context`, streaming the builder's output; a failure shows its last lines."""
    import docker

    log(f"building image {tag} from {context} (nanochat {build_args.get('NANOCHAT_REF', '?')[:7]}); the first build takes a while")
    tail: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, buildargs=build_args, rm=True, forcerm=True, decode=True):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        tail = (tail + [line])[-20:]
                        log(f"  {line}")
            if "error" in chunk:
                raise BackendError(
                    f"Building {tag} failed: {chunk['error'].strip()}\n  " + "\n  ".join(tail[-10:]),
                    ["Read the build output above for the failing step.", "Fix it and run the same command again (finished layers are cached)."],
                )
    except docker.errors.APIError as e:
        raise BackendError(f"The engine refused to build {tag}: {e.explanation or e}", ["Check the build context and the engine's log."]) from None


def ensure(client, spec, log: Log) -> str:
    """The tag to run: the spec's or the default; built when missing (or with --rebuild)."""
    import docker

    tag = spec.image or default_tag(spec.plan)
    if not spec.rebuild:
        try:
            client.images.get(tag)
            log(f"image {tag}: found on the engine")
            return tag
        except docker.errors.ImageNotFound:
            pass
    args = {"NANOCHAT_REF": spec.plan.commit, **spec.build_args}
    build(client, tag, find_context(spec.build_context), args, log)
    return tag


def check_commit(client, tag: str, plan) -> str:
    """The image must carry the plan's nanochat: its flags were checked against that commit only."""
    labels = client.images.get(tag).labels or {}
    commit = labels.get(COMMIT_LABEL, "")
    if not commit:
        return f"image {tag}: no {COMMIT_LABEL} label; the node agent checks the commit itself"
    if not (commit.startswith(plan.commit) or plan.commit.startswith(commit)):
        raise PreflightError(
            f"Image {tag} holds nanochat {commit[:7]}, but recipe {plan.recipe!r} is pinned to {plan.commit[:7]}.",
            [f"Drop --image to use (or build) {default_tag(plan)}, or", f"rebuild it: --rebuild (builds with NANOCHAT_REF={plan.commit[:7]})."],
        )
    return f"image {tag}: nanochat {commit[:7]}, as the plan needs"
