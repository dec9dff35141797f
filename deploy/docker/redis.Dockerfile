# syntax=docker/dockerfile:1.7
# Redis for deploy/compose/compose.local-deps.yaml, on machines that cannot pull the public image
# docker.io/library/redis: Debian's redis-server (7.0 on bookworm; `bash scripts/build-images.sh deps` builds it):
#   podman build -f deploy/docker/redis.Dockerfile -t inspection-redis:7.0 .
# Run like the public image: the command is `redis-server [OPTIONS]` (compose adds --appendonly yes and
# --requirepass), the working and data directory is /data, the port 6379. Until a password is set, Redis's protected
# mode answers loopback clients only. The health check authenticates with REDIS_PASSWORD when it is set.
ARG DEBIAN_IMAGE=debian:12.12-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Redis from the pinned base's distribution, which takes that release's security updates (no apt pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ddad \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ddad \
    && install -d -o 10001 -g 10001 /data
WORKDIR /data
USER 10001:10001
EXPOSE 6379
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=6 \
    CMD ["sh", "-c", "[ -z \"${REDIS_PASSWORD:-}\" ] || export REDISCLI_AUTH=\"$REDIS_PASSWORD\"; redis-cli ping | grep -q PONG"]
CMD ["redis-server"]
