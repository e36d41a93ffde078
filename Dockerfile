# One image for every node: CUDA 12.8 + cuDNN, uv, nanochat at a pinned commit with the venv its own uv.lock
# describes (torch for CUDA 12.8, the Rust BPE tokenizer wheel), and the runner. Every backend starts it with
# `runner node run ...`; nothing in it is specific to one backend.
#
#     docker build -t nanochat-runner .                                  (the `seed` recipe's nanochat)
#     docker build -t nanochat-runner:latest-pin --build-arg NANOCHAT_REF=92d63d4e8bb4df75c3b71618f31ddde2378b2bcd .
#
# Offline builds (how the tests build it): NANOCHAT_SRC names a nanochat checkout inside the build context and
# WHEELHOUSE a folder of wheels plus a `uv` binary; then nothing is downloaded.
#
# It builds with Docker's legacy builder as well as BuildKit: no RUN --mount, no heredocs. The install steps are
# scripts in docker/ so that a bare host (the SSH backend) gets exactly the same install from docker/install.sh.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# The `seed` recipe's pin (runner/recipes/seed.toml); `runner up` passes the plan's commit.
ARG NANOCHAT_REF=a1ccb3dc0b7095620751498b8652a6d6647d8c01
ARG NANOCHAT_REPO=https://github.com/karpathy/nanochat.git
ARG NANOCHAT_SRC=
ARG WHEELHOUSE=
ARG UV_VERSION=0.13.8
ARG RUNNER_UID=1000

LABEL org.opencontainers.image.title="nanochat-runner" \
      org.opencontainers.image.description="Karpathy's nanochat speedrun, pinned, with its runner" \
      org.nanochat-runner.nanochat-commit="${NANOCHAT_REF}"

# Scratch is fast local disk: nanochat's base dir and every compile/download cache live there, never in $HOME.
# (DL3064 mistakes TIKTOKEN_CACHE_DIR for a secret: it holds tiktoken's public encodings.)
# hadolint ignore=DL3064
ENV NANOCHAT_DIR=/opt/nanochat \
    RUNNER_VENV=/opt/runner \
    RUNNER_SCRATCH=/scratch \
    HOME=/home/runner \
    UV_PYTHON_INSTALL_DIR=/opt/uv/python \
    XDG_CACHE_HOME=/scratch/cache \
    UV_CACHE_DIR=/scratch/cache/uv \
    HF_HOME=/scratch/cache/hf \
    TIKTOKEN_CACHE_DIR=/scratch/cache/tiktoken \
    TORCHINDUCTOR_CACHE_DIR=/scratch/cache/inductor \
    TRITON_CACHE_DIR=/scratch/cache/triton \
    PYTHONUNBUFFERED=1

COPY docker/ /opt/build/docker/
RUN bash /opt/build/docker/install-system.sh

# The legacy builder has no conditional COPY: an unset argument copies docker/empty, and the scripts then
# download instead.
COPY ${WHEELHOUSE:-docker/empty} /opt/build/wheelhouse/
RUN WHEELS="${WHEELHOUSE:+/opt/build/wheelhouse}" bash /opt/build/docker/install-uv.sh

COPY ${NANOCHAT_SRC:-docker/empty} /opt/build/nanochat-src/
RUN NANOCHAT_FROM="${NANOCHAT_SRC:+/opt/build/nanochat-src}" WHEELS="${WHEELHOUSE:+/opt/build/wheelhouse}" \
    bash /opt/build/docker/install-nanochat.sh \
    && rm -rf /opt/build/nanochat-src

COPY pyproject.toml README.md /opt/build/runner/
COPY runner/ /opt/build/runner/runner/
COPY backends/ /opt/build/runner/backends/
RUN WHEELS="${WHEELHOUSE:+/opt/build/wheelhouse}" bash /opt/build/docker/install-runner.sh \
    && rm -rf /opt/build/runner

USER ${RUNNER_UID}
WORKDIR /scratch
ENTRYPOINT ["runner"]
CMD ["--help"]
