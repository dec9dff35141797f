# shellcheck shell=bash
# scripts/_k8s_build.sh - build Kubernetes commands (kube-apiserver, kubelet, ...) of one release with Go (sourced by
# bootstrap.sh and e2e-cluster.sh, not run).
#
#   k8s_build VERSION OUT_DIR COMMAND...    e.g. k8s_build v1.34.4 "$DDAD_HOME/go/bin" kubelet kube-scheduler
#
# k8s.io/kubernetes is not `go install`-able (its go.mod replaces the staging modules with local paths): the commands
# are built from a small module that pins those to their published v0.MINOR.PATCH releases instead, with the version
# stamped as the release's own Makefile does. Module and build caches live under $DDAD_HOME/go (shared with the
# other Go tools). Returns non-zero when a step fails (its output is on stdout/stderr).

k8s_go() {  # go with the caches under $DDAD_HOME/go
    env GOBIN="$DDAD_HOME/go/bin" GOPATH="$DDAD_HOME/go/path" GOMODCACHE="$DDAD_HOME/go/mod" \
        GOCACHE="$DDAD_HOME/go/build-cache" GOFLAGS="${GOFLAGS:-} -modcacherw" go "$@"
}

k8s_build() {
    local v="$1" out="$2" k8smod staging minor cmd src
    shift 2
    src="$DDAD_HOME/go/k8s-src-$(printf '%s ' "$@" | sha256sum | cut -c1-8)"
    k8smod="$(k8s_go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" || true
    if [ -z "$k8smod" ]; then
        echo "could not download k8s.io/kubernetes $v from the Go module proxy" >&2
        return 1
    fi
    staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) v0\.0\.0$#\1#p' "$k8smod" | sort -u)"
    rm -rf "$src" && mkdir -p "$src" "$out"
    { echo "module ddad.local/k8s-build"; echo "go 1.24"; echo "require k8s.io/kubernetes $v"
      for m in $staging; do echo "replace $m => $m v0.${v#v1.}"; done; } >"$src/go.mod"
    { printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
      printf ')\n'; } >"$src/tools.go"
    minor="${v#v1.}"; minor="${minor%%.*}"
    local pkgs=()
    for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
    ( cd "$src" && k8s_go mod tidy && k8s_go build -o "$out/" -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$v \
        -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" "${pkgs[@]}" )
}
