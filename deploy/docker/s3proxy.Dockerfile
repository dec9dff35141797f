# syntax=docker/dockerfile:1.7
# An S3-compatible store for deploy/compose/compose.local-deps.yaml, on machines that cannot pull the public MinIO
# image: s3proxy with a filesystem blob store on Debian's Java 17, from the s3proxy jars of Maven Central that
# scripts/bootstrap.sh fetches, given as the build context `s3proxy-libs`
# (`bash scripts/build-images.sh deps` builds it with the other two):
#   podman build --build-context s3proxy-libs=$DDAD_HOME/s3proxy/4.1.0/libs -f deploy/docker/s3proxy.Dockerfile \
#       -t inspection-s3proxy:4.1.0 .
# Port 9000; every bucket is a folder under the data directory (the command's argument, default /data); requests are
# signed with S3PROXY_IDENTITY / S3PROXY_CREDENTIAL (deploy/docker/deps/s3proxy-entrypoint.sh).
ARG DEBIAN_IMAGE=debian:12.12-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Java from the pinned base's distribution, which takes that release's security updates (no apt pin); python3 runs the
# health check. The same step as in kafka.Dockerfile, so the two images share the layer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ddad \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ddad
# `s3proxy-libs` is a build context (the jar folder), not a stage of this file.
# hadolint ignore=DL3022
COPY --from=s3proxy-libs . /opt/s3proxy/libs/
COPY deploy/docker/deps/s3proxy-entrypoint.sh deploy/docker/deps/s3proxy-logback.xml /opt/s3proxy/
RUN install -d -o 10001 -g 10001 /data
USER 10001:10001
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python3", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:9000/healthz', timeout=4)"]
ENTRYPOINT ["/opt/s3proxy/s3proxy-entrypoint.sh"]
CMD ["/data"]
