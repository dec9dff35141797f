# syntax=docker/dockerfile:1.7
# Apache Kafka for deploy/compose/compose.local-deps.yaml, on machines that cannot pull the public image
# docker.io/apache/kafka: one KRaft node (broker and controller) on Debian's Java 17, with the broker jars from Maven
# Central that scripts/bootstrap.sh fetches, given as the build context `kafka-libs`
# (`bash scripts/build-images.sh deps` builds it with the other two):
#   podman build --build-context kafka-libs=$DDAD_HOME/kafka/4.1.1/libs -f deploy/docker/kafka.Dockerfile \
#       -t inspection-kafka:4.1.1 .
# Configured like the public image: KAFKA_<NAME> environment variables become broker properties over single-node
# defaults (deploy/docker/deps/kafka-entrypoint.sh); data in /var/lib/kafka/data; clients on 9092, controller on 9093.
ARG DEBIAN_IMAGE=debian:12.12-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Java from the pinned base's distribution, which takes that release's security updates (no apt pin); python3 runs the
# health check. The same step as in s3proxy.Dockerfile, so the two images share the layer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ddad \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ddad
# `kafka-libs` is a build context (the jar folder), not a stage of this file.
# hadolint ignore=DL3022
COPY --from=kafka-libs . /opt/kafka/libs/
COPY deploy/docker/deps/kafka-entrypoint.sh deploy/docker/deps/kafka-healthcheck.py \
    deploy/docker/deps/kafka-log4j2.properties /opt/kafka/
RUN install -d -o 10001 -g 10001 /var/lib/kafka/data
USER 10001:10001
EXPOSE 9092 9093
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=6 \
    CMD ["python3", "/opt/kafka/kafka-healthcheck.py", "localhost:9092"]
ENTRYPOINT ["/opt/kafka/kafka-entrypoint.sh"]
