#!/usr/bin/env bash
# scripts/build-images.sh - build the services and the worker image with podman from deploy/docker/*.Dockerfile.
#
#   bash scripts/build-images.sh                 # both images
#   bash scripts/build-images.sh services        # only the slim services image (worker: only the worker)
#
# Environment:
#   DDAD_IMAGE_BASE   debian (default): a base made here from Debian packages (mmdebstrap bookworm, podman import),
#                     for machines that reach no container registry; the worker runs Debian's Python 3.11 there.
#                     registry: the Dockerfiles' own pinned public bases.
#   SERVICES_IMAGE    tag of the services image (default inspection-services:0.1.0)
#   WORKER_IMAGE      tag of the worker image (default inspection-worker:0.1.0-cuda13.0)
#   DDAD_HOME         cache dir (default ~/.cache/ddad-inspection); build times and sizes are appended to
#                     $DDAD_HOME/images/builds.tsv
# Exit 2 with one line when the machine cannot build (no podman, no runtime that starts a container); 1 when a build
# fails (its log named).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTR_PROG=build-images
# shellcheck source=scripts/_containers.sh
source "$REPO/scripts/_containers.sh"

SERVICES_IMAGE="${SERVICES_IMAGE:-inspection-services:0.1.0}"
WORKER_IMAGE="${WORKER_IMAGE:-inspection-worker:0.1.0-cuda13.0}"
DDAD_IMAGE_BASE="${DDAD_IMAGE_BASE:-debian}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(services worker)
for t in "${targets[@]}"; do
    case "$t" in services|worker) ;; *) ctr_die 1 "unknown image '$t': services or worker" ;; esac
done

ctr_require podman podman
services_args=() worker_args=()
case "$DDAD_IMAGE_BASE" in
    debian)
        ctr_debian_base
        ctr_runtime "$CTR_BASE_IMAGE"
        services_args=(--build-arg "PYTHON_IMAGE=$CTR_BASE_IMAGE")
        worker_args=(--build-arg "CUDA_IMAGE=$CTR_BASE_IMAGE" --build-arg "PYTHON_VERSION=$CTR_BASE_PYTHON_VERSION")
        ;;
    registry) ;;
    *) ctr_die 1 "DDAD_IMAGE_BASE=$DDAD_IMAGE_BASE: use debian (a base made from Debian packages) or registry" ;;
esac

# The host's CA bundle, where it names one for pip (a network that re-signs TLS): mounted into the build steps only,
# never copied into an image.
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
        --ignorefile "deploy/docker/$name.Dockerfile.dockerignore" -t "$tag" "${ca_args[@]}" "$@" . >"$log" 2>&1 \
        || ctr_die 1 "building $tag failed: $(tail -1 "$log") (log: $log)"
    seconds=$(($(date +%s) - t0))
    bytes="$(podman image inspect --format '{{.Size}}' "$tag")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$tag" "$DDAD_IMAGE_BASE" "$seconds" "$bytes" >>"$report"
    printf '[build-images] %-40s %4d s  %6.2f GB\n' "$tag" "$seconds" "$(awk -v b="$bytes" 'BEGIN{print b/1e9}')"
}

cd "$REPO"
for t in "${targets[@]}"; do
    case "$t" in
        services) build services "$SERVICES_IMAGE" "${services_args[@]}" ;;
        worker) build worker "$WORKER_IMAGE" "${worker_args[@]}" ;;
    esac
done
echo "[build-images] done; times and sizes in $report"
