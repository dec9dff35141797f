# syntax=docker/dockerfile:1.7
# The GPU worker image (build context: the repository):
#   docker build -f deploy/docker/worker.Dockerfile -t inspection-worker:0.1.0-cuda13.0 .
# CUDA runtime base; torch's CUDA wheels bring the matching user-space libraries, the node brings the driver
# (CUDA 13: driver >= 580). The model bundle is not in the image: mount it read-only at /models/bundle (the worker
# checks every file's SHA-256 against bundle.json when it loads it) or let the init container
# `python /app/deploy/bundle/fetch_bundle.py` download and verify it first (the Helm chart does either).
# No secret is baked in: every setting comes from WORKER_* environment variables at run time.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
# The Python of the base's distribution: 3.12 on Ubuntu 24.04; 3.11 on a Debian bookworm base (scripts/build-images.sh
# makes one from Debian packages where no registry can be reached; torch's wheels bring the CUDA libraries either way).
ARG PYTHON_VERSION=3.12

FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION
# pip's CA bundle where the build's network re-signs TLS: a file mounted into the build and named here
# (scripts/build-images.sh does both with the host's bundle); unset, pip uses its own.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH DEBIAN_FRONTEND=noninteractive
# The base image is pinned; its distribution's Python takes that release's security updates (no apt pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv /opt/venv
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml /src/pyproject.toml
# The dependencies in a layer of their own: it changes only with pyproject.toml or the pins, so a code change rebuilds
# the image in seconds instead of downloading torch's wheels (several GB) again.
RUN python -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install --constraint /tmp/constraints.txt --requirement /tmp/requirements.txt
COPY README.md /src/
COPY ddad_core /src/ddad_core
COPY services /src/services
# Then the project itself. devtools/ (local servers, demo) stays out, and so does its development command, which
# pyproject.toml declares for checkouts (it would only fail here).
RUN pip install --no-deps /src \
    && rm /opt/venv/bin/inspection-stack

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 inspection \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/inspection --create-home --shell /usr/sbin/nologin inspection
COPY --from=build /opt/venv /opt/venv
COPY deploy/bundle /app/deploy/bundle
COPY deploy/docker/healthcheck.py /app/deploy/docker/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/inspection \
    XDG_CACHE_HOME=/tmp/cache WORKER_BUNDLE_PATH=/models/bundle \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Generous start period: loading the bundle and the warm-up batch come before /healthz turns healthy for good.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 CMD ["python", "/app/deploy/docker/healthcheck.py"]
CMD ["inspection-worker"]
