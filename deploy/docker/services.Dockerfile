# syntax=docker/dockerfile:1.7
# The slim CPU image of the ingestor, the alerter, the dashboard and the topic Job (build context: the repository):
#   docker build -f deploy/docker/services.Dockerfile -t inspection-services:0.1.0 .
# Run one with its console script: inspection-ingestor | inspection-alerter | inspection-dashboard (default: alerter).
# No secret is baked in: every setting comes from <PREFIX>_* environment variables at run time.
# The base: any Python 3.11+ image whose `python` has the venv module and which has groupadd/useradd
# (scripts/build-images.sh makes one from Debian packages where no registry can be reached).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pip's CA bundle where the build's network re-signs TLS: a file mounted into the build and named here
# (scripts/build-images.sh does both with the host's bundle); unset, pip uses its own.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY deploy/docker/constraints.txt deploy/docker/services-requirements.txt /tmp/
# No torch: these services never run the model, so only the packages they import are installed (no torch, torchvision,
# diffusers, timm, safetensors, scipy or tqdm; tests/helm/test_services_without_torch.py checks they run without them).
RUN pip install --constraint /tmp/constraints.txt --requirement /tmp/services-requirements.txt
COPY pyproject.toml README.md /src/
COPY ddad_core /src/ddad_core
COPY services /src/services
# The project without its dependencies (the model's are pyproject.toml's too). devtools/ (local servers, demo) stays
# out, and so do the commands that would only fail here: the development command inspection-stack, which
# pyproject.toml declares for checkouts, and the model's commands (ddad, inspection-worker, inspection-teacher).
RUN pip install --no-deps /src \
    && rm /opt/venv/bin/inspection-stack /opt/venv/bin/ddad /opt/venv/bin/inspection-worker \
        /opt/venv/bin/inspection-teacher

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 inspection \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/inspection --create-home --shell /usr/sbin/nologin inspection
COPY --from=build /opt/venv /opt/venv
COPY deploy/kafka /app/deploy/kafka
COPY deploy/docker/healthcheck.py /app/deploy/docker/healthcheck.py
# Read-only root filesystem in Kubernetes: caches and temporary files go to /tmp (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/inspection \
    XDG_CACHE_HOME=/tmp/cache
WORKDIR /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "/app/deploy/docker/healthcheck.py"]
CMD ["inspection-alerter"]
