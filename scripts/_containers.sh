# shellcheck shell=bash
# scripts/_containers.sh - podman on this machine, shared by build-images.sh, run-images.sh and e2e-cluster.sh
# (sourced, not run). It checks that podman can start a container and, where the machine forbids what the default
# runtime does, switches to a set-up that works and says so; what cannot work is one line on stderr and exit 2.
#
#   ctr_require CMD PACKAGE        exit 2 unless CMD is on PATH (PACKAGE: the Debian package that provides it)
#   ctr_debian_base                make the Debian base image (mmdebstrap -> podman import) unless it exists
#   ctr_runtime                    export CONTAINERS_CONF when the default OCI runtime cannot start a container
# Environment: DDAD_HOME (cache dir), CTR_PROG (the calling script's name, for its messages).

: "${DDAD_HOME:=$HOME/.cache/ddad-inspection}"
: "${CTR_PROG:=containers}"
# The base of both images where no registry is reachable: Debian bookworm with the Python the Dockerfiles need
# (`python` with venv, groupadd/useradd, CA certificates for pip).
CTR_BASE_SUITE=bookworm
CTR_BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates
CTR_BASE_IMAGE="localhost/ddad-debian-base:$CTR_BASE_SUITE-$(printf '%s' "$CTR_BASE_PACKAGES" | sha256sum | cut -c1-8)"
# shellcheck disable=SC2034  # read by the scripts that source this file
CTR_BASE_PYTHON_VERSION=3.11   # Debian bookworm's python3
# Limits a container may have when the machine cannot raise them (no CAP_SYS_RESOURCE): lower than the usual default.
CTR_ULIMITS=("nofile=4096:4096" "nproc=4096:4096")

ctr_die() {  # exit status, message (one or more words)
    echo "$CTR_PROG: ${*:2}" >&2
    exit "$1"
}

ctr_require() {  # command, Debian package
    command -v "$1" >/dev/null 2>&1 \
        || ctr_die 2 "needs $1, not found on PATH: install Debian's $2 (apt-get install $2)"
}

ctr_image_exists() { podman image exists "$1"; }

ctr_debian_base() {
    if ctr_image_exists "$CTR_BASE_IMAGE"; then
        echo "[$CTR_PROG] base $CTR_BASE_IMAGE: present"
        return
    fi
    ctr_require mmdebstrap mmdebstrap
    [ "$(id -u)" = 0 ] || ctr_die 2 "making the Debian base with mmdebstrap needs root here (or a base given with" \
        "DDAD_IMAGE_BASE=registry)"
    local tar t0
    tar="$(mktemp -d)/base.tar"
    t0="$(date +%s)"
    echo "[$CTR_PROG] making $CTR_BASE_IMAGE: mmdebstrap $CTR_BASE_SUITE with $CTR_BASE_PACKAGES"
    mmdebstrap --quiet --variant=apt --include="$CTR_BASE_PACKAGES" "$CTR_BASE_SUITE" "$tar" \
        || ctr_die 2 "mmdebstrap $CTR_BASE_SUITE failed: is a Debian mirror reachable (apt sources)?"
    # An imported file system has no environment: give it the PATH and locale a distribution image has.
    podman import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" --change 'CMD ["python3"]' "$tar" "$CTR_BASE_IMAGE" >/dev/null
    rm -rf "$(dirname "$tar")"
    echo "[$CTR_PROG] base $CTR_BASE_IMAGE made in $(($(date +%s) - t0)) s"
}

ctr_runtime() {  # image to try the runtime with
    local image="$1" err conf
    if err="$(podman run --rm --network none "$image" true 2>&1)"; then
        return
    fi
    # Known refusals of a default set-up: crun on a cgroup v1/v2 hybrid, and any runtime raising rlimits without
    # CAP_SYS_RESOURCE. runc with limits below the machine's own avoids both.
    conf="$DDAD_HOME/containers/containers.conf"
    mkdir -p "$(dirname "$conf")"
    {
        echo "[containers]"
        printf 'default_ulimits = ["%s", "%s"]\n' "${CTR_ULIMITS[@]}"
        echo
        echo "[engine]"
        echo 'runtime = "runc"'
    } >"$conf"
    export CONTAINERS_CONF="$conf"
    command -v runc >/dev/null 2>&1 || ctr_die 2 "podman cannot start a container (${err##*$'\n'}) and runc, the" \
        "fallback, is missing: apt-get install runc"
    local err2
    err2="$(podman run --rm --network none "$image" true 2>&1)" \
        || ctr_die 2 "podman cannot start a container: ${err2##*$'\n'} (needs an OCI runtime that runs on this" \
            "kernel's cgroups and may set rlimits, i.e. CAP_SYS_RESOURCE or limits below the machine's)"
    echo "[$CTR_PROG] the default runtime refused (${err##*$'\n'}); using runc with ulimits ${CTR_ULIMITS[*]}" \
        "(CONTAINERS_CONF=$conf)"
}
