#!/usr/bin/env bash
# scripts/build-images.sh - build the product's images, and the servers it needs, with podman from
# deploy/docker/*.Dockerfile.
#
#   bash scripts/build-images.sh                 # the services and the worker image
#   bash scripts/build-images.sh services        # only the slim services image (worker: only the worker)
#   bash scripts/build-images.sh deps            # Kafka, Redis and s3proxy, for deploy/compose/compose.local-deps.yaml
#                                                # (or one of them: kafka, redis, s3proxy)
#
# Environment:
#   DDAD_IMAGE_BASE   debian (default): a base made here from Debian packages (mmdebstrap bookworm, podman import),
#                     for machines that reach no container registry; the worker runs Debian's Python 3.11 there.
#                     registry: the Dockerfiles' own pinned public bases.
#   SERVICES_IMAGE    tag of the services image (default inspection-services:0.1.0)
#   WORKER_IMAGE      tag of the worker image (default inspection-worker:0.1.0-cuda13.0)
#   KAFKA_IMAGE, REDIS_IMAGE, S3PROXY_IMAGE
#                     tags of the three servers (default inspection-kafka:<Kafka version>, inspection-redis:7.0,
#                     inspection-s3proxy:<s3proxy version>; the versions pinned in devtools/localstack/common.py)
#   DDAD_KAFKA_LIBS, DDAD_S3PROXY_LIBS
#                     the Kafka and s3proxy jars the two images copy (default: where scripts/bootstrap.sh puts them,
#                     $DDAD_HOME/kafka/<version>/libs and $DDAD_HOME/s3proxy/<version>/libs)
#   DDAD_HOME         cache dir (default ~/.cache/ddad-inspection); build times and sizes are appended to
#                     $DDAD_HOME/images/builds.tsv
# Exit 2 with one line when the machine cannot build (no podman, no runtime that starts a container, no jars); 1 when a
# build fails (its log named).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTR_PROG=build-images
# shellcheck source=scripts/_containers.sh
source "$REPO/scripts/_containers.sh"

SERVICES_IMAGE="${SERVICES_IMAGE:-inspection-services:0.1.0}"
WORKER_IMAGE="${WORKER_IMAGE:-inspection-worker:0.1.0-cuda13.0}"
DDAD_IMAGE_BASE="${DDAD_IMAGE_BASE:-debian}"
# The versions the local stack runs (scripts/bootstrap.sh reads the same lines): the images copy those jars.
_pinned() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" "$REPO/devtools/localstack/common.py"; }
KAFKA_VERSION="$(_pinned KAFKA_VERSION)"
S3PROXY_VERSION="$(_pinned S3PROXY_VERSION)"
KAFKA_IMAGE="${KAFKA_IMAGE:-inspection-kafka:$KAFKA_VERSION}"
REDIS_IMAGE="${REDIS_IMAGE:-inspection-redis:7.0}"
S3PROXY_IMAGE="${S3PROXY_IMAGE:-inspection-s3proxy:$S3PROXY_VERSION}"
KAFKA_LIBS="${DDAD_KAFKA_LIBS:-$DDAD_HOME/kafka/$KAFKA_VERSION/libs}"
S3PROXY_LIBS="${DDAD_S3PROXY_LIBS:-$DDAD_HOME/s3proxy/$S3PROXY_VERSION/libs}"

targets=()
for t in "$@"; do
    case "$t" in
        services|worker|kafka|redis|s3proxy) targets+=("$t") ;;
        deps) targets+=(kafka redis s3proxy) ;;
        *) ctr_die 1 "unknown image '$t': services, worker, deps (= kafka redis s3proxy), kafka, redis or s3proxy" ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(services worker)
need_jars() {  # folder, what, variable
    compgen -G "$1/*.jar" >/dev/null || ctr_die 2 "needs the $2 jars in $1: fetch them with" \
        "\`DDAD_SETUP=demo bash scripts/bootstrap.sh\` (Maven Central) or name a folder of them with $3"
}
for t in "${targets[@]}"; do
    case "$t" in
        kafka) need_jars "$KAFKA_LIBS" "Kafka $KAFKA_VERSION" DDAD_KAFKA_LIBS ;;
        s3proxy) need_jars "$S3PROXY_LIBS" "s3proxy $S3PROXY_VERSION" DDAD_S3PROXY_LIBS ;;
    esac
done

ctr_require podman podman
services_args=() worker_args=() deps_args=()
case "$DDAD_IMAGE_BASE" in
    debian)
        ctr_debian_base
        ctr_runtime "$CTR_BASE_IMAGE"
        services_args=(--build-arg "PYTHON_IMAGE=$CTR_BASE_IMAGE")
        worker_args=(--build-arg "CUDA_IMAGE=$CTR_BASE_IMAGE" --build-arg "PYTHON_VERSION=$CTR_BASE_PYTHON_VERSION")
        deps_args=(--build-arg "DEBIAN_IMAGE=$CTR_BASE_IMAGE")
        ;;
    registry) ;;
    *) ctr_die 1 "DDAD_IMAGE_BASE=$DDAD_IMAGE_BASE: use debian (a base made from Debian packages) or registry" ;;
esac

# The host's CA bundle, where it names one for pip (a network that re-signs TLS): mounted into the pip steps of the
# services and worker builds only, never copied into an image.
host_ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
ca_args=()
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
    ca_args=(--volume "$(realpath "$host_ca"):/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi

logs="$DDAD_HOME/images/logs"
mkdir -p "$logs"
report="$DDAD_HOME/images/builds.tsv"
[ -f "$report" ] || printf 'date\timage\tbase\tseconds\tbytes\n' >"$report"

build() {  # name tag extra-args...
    local name="$1" tag="$2" t0 seconds bytes log="$logs/$1.log"
    shift 2
    echo "[build-images] building $tag (deploy/docker/$name.Dockerfile, log $log) ..."
    t0="$(date +%s)"
    # Host networking for the build steps: they only download (apt, PyPI), and it needs no bridge or firewall rules.
    # Docker's image format: the OCI format has no HEALTHCHECK, and podman would drop the Dockerfiles' checks.
    podman build --format docker --network host --layers -f "deploy/docker/$name.Dockerfile" \
        --ignorefile "deploy/docker/$name.Dockerfile.dockerignore" -t "$tag" "$@" . >"$log" 2>&1 \
        || ctr_die 1 "building $tag failed: $(tail -1 "$log") (log: $log)"
    seconds=$(($(date +%s) - t0))
    bytes="$(podman image inspect --format '{{.Size}}' "$tag")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$tag" "$DDAD_IMAGE_BASE" "$seconds" "$bytes" >>"$report"
    printf '[build-images] %-40s %4d s  %6.2f GB\n' "$tag" "$seconds" "$(awk -v b="$bytes" 'BEGIN{print b/1e9}')"
}

cd "$REPO"
for t in "${targets[@]}"; do
    case "$t" in
        services) build services "$SERVICES_IMAGE" "${ca_args[@]}" "${services_args[@]}" ;;
        worker) build worker "$WORKER_IMAGE" "${ca_args[@]}" "${worker_args[@]}" ;;
        # The jars travel as named build contexts (--build-context, in podman and BuildKit): no copy of them
        # in the repository's build context.
        kafka) build kafka "$KAFKA_IMAGE" --build-context "kafka-libs=$KAFKA_LIBS" "${deps_args[@]}" ;;
        redis) build redis "$REDIS_IMAGE" "${deps_args[@]}" ;;
        s3proxy) build s3proxy "$S3PROXY_IMAGE" --build-context "s3proxy-libs=$S3PROXY_LIBS" "${deps_args[@]}" ;;
    esac
done
echo "[build-images] done; times and sizes in $report"
