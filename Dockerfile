# tuner for CUDA GPU hosts, with exactly the versions the test suite ran with (constraints.txt).
#   docker build -t tuner .
#   docker run --gpus all -v "$PWD":/workspace tuner train config.yml
# torch is PyPI's torch==TORCH_VERSION: on linux/amd64 that wheel is the CUDA 13 build (it
# brings its CUDA libraries as nvidia-* wheels, pinned by torch itself; the host needs an NVIDIA
# driver for CUDA 13, 580 or newer). Another CUDA build of the same version:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# flash-attention (--build-arg FLASH_ATTN=true) compiles against the CUDA toolkit: it needs a
# base image with nvcc and Python 3.11 (--build-arg BASE_IMAGE=...).
# The image has never been built by this project's CI (its machine has no Docker daemon); CI lints
# this file with hadolint and tests/unit/test_dockerfile.py checks every pin against constraints.txt.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG FLASH_ATTN=false
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/.cache/huggingface \
    TUNER_CACHE=/workspace/.cache/tuner

WORKDIR /opt/tuner
# Dependencies first (their own layers). Every install runs under -c constraints.txt, so each
# package, transitive ones included, gets the version the tests ran with.
COPY constraints.txt docker/requirements.txt docker/flash-attn.txt docker/
RUN pip install --no-cache-dir -c docker/constraints.txt --index-url "${TORCH_INDEX_URL}" \
        --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -c docker/constraints.txt -r docker/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps ./ \
    && if [ "$FLASH_ATTN" = "true" ]; then \
        pip install --no-cache-dir --no-build-isolation -c docker/constraints.txt -r docker/flash-attn.txt; fi

# A non-root user and a writable workspace for configs, data, caches and outputs.
RUN useradd --create-home --uid 1000 tuner \
    && mkdir -p /workspace/.cache \
    && chown -R tuner:tuner /workspace
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["tuner"]
CMD ["--help"]
