# tuner for CUDA GPU hosts.
#   docker build -t tuner .                                   # add --build-arg FLASH_ATTN=true for flash-attention
#   docker run --gpus all -v "$PWD":/workspace tuner train config.yml
# The image has never been built by this project's CI (its machine has no Docker daemon);
# CI lints this file with hadolint and checks docker/requirements.txt against pyproject.toml.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG FLASH_ATTN=false
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/.cache/huggingface \
    TUNER_CACHE=/workspace/.cache/tuner

WORKDIR /opt/tuner
# Dependencies first (their own layer): exactly the requirements pyproject.toml declares.
COPY docker/requirements.txt docker/requirements.txt
RUN pip install --no-cache-dir -r docker/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps ./ \
    && if [ "$FLASH_ATTN" = "true" ]; then pip install --no-cache-dir --no-build-isolation -r docker/flash-attn.txt; fi

# A non-root user and a writable workspace for configs, data, caches and outputs.
RUN useradd --create-home --uid 1000 tuner \
    && mkdir -p /workspace/.cache \
    && chown -R tuner:tuner /workspace
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["tuner"]
CMD ["--help"]
