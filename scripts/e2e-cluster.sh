#!/usr/bin/env bash
# scripts/e2e-cluster.sh - the Helm chart on a single-node Kubernetes made here from real components, and the
# streaming checks through its pods.
#
#   bash scripts/e2e-cluster.sh up      # check the machine, build what is missing, start the node, load the images,
#                                       # start Kafka/Redis/S3 for the pods, install the chart
#   bash scripts/e2e-cluster.sh run     # the demo's frames through the pods to `defects`; a worker pod deleted
#                                       # mid-stream; a rolling update to a new bundle under load (devtools.cluster)
#   bash scripts/e2e-cluster.sh down    # stop everything `up` started and remove its network rules
#   bash scripts/e2e-cluster.sh check   # only the machine check `up` starts with
#
# The node: etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (built
# with Go from the Kubernetes release bootstrap.sh builds kube-apiserver from), containerd and the CNI plugins
# (Debian's containerd, containernetworking-plugins), the sandbox ("pause") image from Debian's static catatonit. No
# kube-proxy and no cluster DNS: the pods reach Kafka, Redis and the S3 server on the node's address. The images are
# those of scripts/build-images.sh, copied from podman into containerd.
#
# Exit 2 with one line, before anything starts, when the machine lacks what a node needs (root, cgroup controllers,
# overlayfs, network namespaces, bridges, iptables NAT, a command); 1 when a step fails (its log named).
# Environment: DDAD_HOME (cache; the cluster lives in $DDAD_HOME/cluster), DDAD_CLUSTER_VALUES (extra values file).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTR_PROG=e2e-cluster
# shellcheck source=scripts/_containers.sh
source "$REPO/scripts/_containers.sh"
# shellcheck source=scripts/_k8s_build.sh
source "$REPO/scripts/_k8s_build.sh"

K8S_VERSION="$(sed -n 's/^KUBE_APISERVER_VERSION="\([^"]*\)".*/\1/p' "$REPO/scripts/bootstrap.sh")"
W="$DDAD_HOME/cluster"
BIN="$DDAD_HOME/go/bin"
LOGS="$W/logs"
NODE=ddad-node
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
BRIDGE=ddad-cni0
NAMESPACE=inspection
RELEASE=insp
ETCD_PORT=23790 ETCD_PEER_PORT=23800 API_PORT=16443
SERVICES_IMAGE="${SERVICES_IMAGE:-inspection-services:0.1.0}"
WORKER_IMAGE="${WORKER_IMAGE:-inspection-worker:0.1.0-cuda13.0}"
PAUSE_IMAGE=localhost/ddad-pause:catatonit
CONTAINERD_SOCK="$W/containerd/containerd.sock"
KUBECONFIG_FILE="$W/pki/admin.kubeconfig"

say() { echo "[e2e-cluster] $*"; }
node_ip() { ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p'; }
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ------------------------------------------------------------------------------------------------ preflight
need() {  # what, what would be needed
    ctr_die 2 "cannot run a Kubernetes node here: $1 (needs $2)"
}

preflight() {
    [ "$(id -u)" = 0 ] || need "not root" "root: the kubelet, containerd and the CNI plugins manage cgroups, mounts and network namespaces"
    local cmd pkg
    for cmd in etcd:etcd-server containerd:containerd ctr:containerd runc:runc podman:podman openssl:openssl \
        iptables:iptables ip:iproute2 mmdebstrap:mmdebstrap; do
        pkg="${cmd#*:}"; cmd="${cmd%%:*}"
        command -v "$cmd" >/dev/null 2>&1 || need "$cmd not found" "Debian's $pkg (apt-get install $pkg)"
    done
    for cmd in bridge host-local loopback portmap; do
        [ -x "/usr/lib/cni/$cmd" ] || need "CNI plugin /usr/lib/cni/$cmd missing" \
            "Debian's containernetworking-plugins"
    done
    [ -x /usr/bin/catatonit ] || need "/usr/bin/catatonit missing (the sandbox image's init)" "Debian's catatonit"
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        for cmd in cpu memory pids; do
            grep -qw "$cmd" /sys/fs/cgroup/cgroup.controllers \
                || need "cgroup v2 controller '$cmd' not available" "the $cmd controller enabled in the root cgroup"
        done
    else
        for cmd in cpu cpuacct cpuset memory pids devices freezer; do
            [ -d "/sys/fs/cgroup/$cmd" ] || need "cgroup v1 controller '$cmd' not mounted" \
                "/sys/fs/cgroup/$cmd mounted (or a cgroup v2 host)"
        done
        mkdir "/sys/fs/cgroup/memory/ddad-probe" 2>/dev/null \
            || need "cannot create a memory cgroup" "a writable cgroup hierarchy (cgroup delegation to this root)"
        rmdir /sys/fs/cgroup/memory/ddad-probe
    fi
    grep -qw overlay /proc/filesystems || need "no overlay file system in the kernel" "overlayfs (containerd's snapshotter)"
    local probe; probe="$(mktemp -d)"
    mkdir -p "$probe"/{l,u,w,m}
    if ! mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
        rm -rf "$probe"; need "cannot mount overlayfs" "CAP_SYS_ADMIN and overlayfs mounts"
    fi
    umount "$probe/m"; rm -rf "$probe"
    ip netns add ddad-probe 2>/dev/null \
        || need "cannot create a network namespace" "CAP_SYS_ADMIN and network namespaces (ip netns add)"
    ip netns delete ddad-probe
    ip link add ddad-probe0 type bridge 2>/dev/null \
        || need "cannot create a bridge interface" "CAP_NET_ADMIN and the bridge driver (the CNI bridge plugin)"
    ip link delete ddad-probe0
    iptables -t nat -S >/dev/null 2>&1 || need "iptables NAT table not usable" "iptables with the nat table (CNI masquerade and port maps)"
    [ -n "$(node_ip)" ] || need "no IPv4 default route" "a network interface with an IPv4 address (the node's address)"
    for cmd in "$SERVICES_IMAGE" "$WORKER_IMAGE"; do
        podman image exists "$cmd" || ctr_die 2 "image $cmd not built: run \`bash scripts/build-images.sh\` first"
    done
}

has_cap_sys_resource() {  # bit 24 of the effective capabilities
    local eff; eff="$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
    (( (16#$eff >> 24) & 1 ))
}

# ------------------------------------------------------------------------------------------------ binaries
build_binaries() {
    local missing=() cmd t0
    for cmd in kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl; do
        [ -x "$BIN/$cmd" ] && [ "$(cat "$DDAD_HOME/stamps/$cmd" 2>/dev/null)" = "$K8S_VERSION" ] || missing+=("$cmd")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    command -v go >/dev/null 2>&1 || need "go not found to build ${missing[*]}" "Go >= 1.21 (or the binaries in $BIN)"
    say "building ${missing[*]} $K8S_VERSION with Go (first time only; log $LOGS/build.log) ..."
    t0="$(date +%s)"
    nice -n 19 ionice -c3 bash -c "source '$REPO/scripts/_k8s_build.sh'; DDAD_HOME='$DDAD_HOME' k8s_build '$K8S_VERSION' '$BIN' ${missing[*]}" \
        >"$LOGS/build.log" 2>&1 || ctr_die 1 "building ${missing[*]} failed: $(tail -1 "$LOGS/build.log") (log $LOGS/build.log)"
    for cmd in "${missing[@]}"; do echo "$K8S_VERSION" >"$DDAD_HOME/stamps/$cmd"; done
    say "built ${missing[*]} in $(($(date +%s) - t0)) s"
}

# ------------------------------------------------------------------------------------------------ processes
start() {  # name command... : run in the background, its pid in $W/pids/<name>
    local name="$1"; shift
    setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! >"$W/pids/$name"
}

stop() {  # name : SIGTERM, then SIGKILL after 20 s
    local pidfile="$W/pids/$1" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

wait_for() {  # what, seconds, command... : retry until the command succeeds
    local what="$1" seconds="$2" t0
    shift 2
    t0="$(date +%s)"
    until "$@" >/dev/null 2>&1; do
        [ $(($(date +%s) - t0)) -lt "$seconds" ] || ctr_die 1 "$what not ready after $seconds s (logs: $LOGS)"
        sleep 1
    done
    say "$what ready after $(($(date +%s) - t0)) s"
}

# ------------------------------------------------------------------------------------------------ pki
pki() {
    local p="$W/pki" ip="$1"
    [ -f "$p/admin.kubeconfig" ] && return 0
    mkdir -p "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=ddad-e2e-ca" -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
    cert() {  # name subject extensions
        openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
        openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
            -extfile <(printf '%s\n' "$3") -out "$p/$1.crt" 2>/dev/null
    }
    cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:$ip,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    cert admin "/O=system:masters/CN=ddad-e2e-admin" "extendedKeyUsage=clientAuth"
    cert kubelet "/CN=$NODE" "subjectAltName=IP:$ip,DNS:$NODE
extendedKeyUsage=serverAuth"
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    cat >"$p/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
current-context: e2e
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$p/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$p/admin.crt", client-key: "$p/admin.key"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
EOF
    chmod 600 "$p"/*.key "$p/admin.kubeconfig"
}

# ------------------------------------------------------------------------------------------------ node
containerd_config() {  # restrict_oom_score_adj: true or false
    mkdir -p "$W/containerd" "$W/cni/net.d"
    cat >"$W/containerd/config.toml" <<EOF
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The kubelet asks for negative oom_score_adj values (-998 for every pod sandbox); lowering one needs
  # CAP_SYS_RESOURCE, and without it runc fails with "can't get final child's PID from pipe: EOF". Where the
  # capability is missing, containerd raises such values to its own instead.
  restrict_oom_score_adj = $1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
EOF
    cat >"$W/cni/net.d/10-ddad.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "ddad-e2e", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
}

kubelet_config() {
    mkdir -p "$W/kubelet"
    cat >"$W/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$1"
port: 10250
healthzPort: 10248
tlsCertFile: "$W/pki/kubelet.crt"
tlsPrivateKeyFile: "$W/pki/kubelet.key"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$W/pki/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
failSwapOn: false
failCgroupV1: false
podCIDR: "$POD_CIDR"
resolvConf: /etc/resolv.conf
# One node that also runs the builds and the servers: no eviction on a disk that is busy holding images.
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
EOF
}

load_images() {
    local image t0
    if ! podman image exists "$PAUSE_IMAGE"; then
        local dir; dir="$(mktemp -d)"
        cp /usr/bin/catatonit "$dir/catatonit"
        tar -C "$dir" -cf "$dir/pause.tar" catatonit
        podman import --change 'ENTRYPOINT ["/catatonit", "-P"]' "$dir/pause.tar" "$PAUSE_IMAGE" >/dev/null
        rm -rf "$dir"
    fi
    for image in "$PAUSE_IMAGE" "$SERVICES_IMAGE" "$WORKER_IMAGE"; do
        local id; id="$(podman image inspect --format '{{.Id}}' "$image")"
        if [ "$(cat "$W/loaded-$(echo "$image" | tr '/:' '__')" 2>/dev/null)" = "$id" ]; then
            continue
        fi
        t0="$(date +%s)"
        # Through a gzip-compressed OCI archive: containerd keeps the archive's layers beside the unpacked ones, and
        # compressed they take about half the space (torch's CUDA libraries are several GB).
        local archive; archive="$(mktemp -d "$W/load.XXXXXX")/image.tar"
        if ! { nice -n 19 ionice -c3 podman push --quiet --compression-format gzip "$image" "oci-archive:$archive:localhost/${image#localhost/}" \
            && ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null; }; then
            rm -rf "$(dirname "$archive")"
            ctr_die 1 "loading $image into containerd failed"
        fi
        rm -rf "$(dirname "$archive")"
        echo "$id" >"$W/loaded-$(echo "$image" | tr '/:' '__')"
        say "loaded $image into containerd in $(($(date +%s) - t0)) s"
    done
}

up() {
    preflight
    mkdir -p "$W/pids" "$LOGS"
    ctr_runtime "$SERVICES_IMAGE"  # podman save/import below use the same runtime set-up as the builds
    build_binaries
    local ip; ip="$(node_ip)"
    pki "$ip"
    local t0; t0="$(date +%s)"
    start etcd etcd --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT"
    start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --secure-port "$API_PORT" --advertise-address "$ip" --bind-address 0.0.0.0 \
        --tls-cert-file "$W/pki/apiserver.crt" --tls-private-key-file "$W/pki/apiserver.key" \
        --client-ca-file "$W/pki/ca.crt" --kubelet-client-certificate "$W/pki/admin.crt" \
        --kubelet-client-key "$W/pki/admin.key" --kubelet-certificate-authority "$W/pki/ca.crt" \
        --service-cluster-ip-range "$SERVICE_CIDR" --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$W/pki/sa.key" --service-account-signing-key-file "$W/pki/sa.key" \
        --authorization-mode Node,RBAC --allow-privileged=false --kubelet-preferred-address-types InternalIP
    wait_for kube-apiserver 180 "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz
    start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --service-account-private-key-file "$W/pki/sa.key" --root-ca-file "$W/pki/ca.crt" \
        --cluster-signing-cert-file "$W/pki/ca.crt" --cluster-signing-key-file "$W/pki/ca.key" \
        --use-service-account-credentials --leader-elect=false --bind-address 127.0.0.1
    start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_FILE" \
        --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
        --leader-elect=false --bind-address 127.0.0.1
    local restrict=false
    has_cap_sys_resource || restrict=true
    [ "$restrict" = false ] || say "no CAP_SYS_RESOURCE here: pods get oom_score_adj >= 0 (containerd's restrict_oom_score_adj)"
    containerd_config "$restrict"
    start containerd containerd --config "$W/containerd/config.toml"
    wait_for containerd 60 ctr --address "$CONTAINERD_SOCK" version
    load_images
    kubelet_config "$ip"
    start kubelet "$BIN/kubelet" --config "$W/kubelet/config.yaml" --kubeconfig "$KUBECONFIG_FILE" \
        --root-dir "$W/kubelet/root" --hostname-override "$NODE" --node-ip "$ip"
    wait_for "node $NODE" 180 node_ready
    say "control plane and node ready $(($(date +%s) - t0)) s after the first start"
    backing_services "$ip"
    say "up: kubectl --kubeconfig $KUBECONFIG_FILE get pods -n $NAMESPACE; next: bash scripts/e2e-cluster.sh run"
}

node_ready() {
    [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# Kafka, Redis and the S3 server (devtools.stack) on this machine. Kafka listens on every interface and advertises
# the node's address; Redis and the S3 server stay on loopback, and the pods reach them on the node's address through
# a DNAT rule from the pod bridge to loopback (route_localnet on that bridge only).
backing_services() {
    local ip="$1"
    [ -f "$W/pids/stack" ] && kill -0 "$(cat "$W/pids/stack")" 2>/dev/null && return 0
    rm -f "$W/stack/stack.env"
    PYTHONPATH="$REPO" start stack "$DDAD_HOME/venv/bin/python" -m devtools.stack up --workdir "$W/stack" \
        --env-file "$W/stack.env" --frames-partitions 4 --kafka-advertise "$ip"
    wait_for "Kafka, Redis and S3 (devtools.stack)" 180 test -s "$W/stack.env"
    local redis_port s3_port
    redis_port="$(sed -n "s#^export REDIS_URL=redis://127.0.0.1:\([0-9]*\)/.*#\1#p" "$W/stack.env")"
    s3_port="$(sed -n "s#^export S3_ENDPOINT_URL=http://127.0.0.1:\([0-9]*\).*#\1#p" "$W/stack.env")"
    if [ -z "$redis_port" ] || [ -z "$s3_port" ]; then
        ctr_die 1 "could not read the Redis and S3 ports from $W/stack.env"
    fi
    echo "$redis_port $s3_port" >"$W/dnat-ports"
    # Redis without a password answers only loopback clients (protected mode); the pods' connections keep their own
    # source address after the DNAT, and the server still listens on loopback only.
    redis-cli -p "$redis_port" config set protected-mode no >/dev/null
    iptables -t nat -A PREROUTING -i "$BRIDGE" -d "$ip" -p tcp -m multiport --dports "$redis_port,$s3_port" \
        -j DNAT --to-destination 127.0.0.1 -m comment --comment ddad-e2e
    # The bridge appears with the first pod; the sysctl is set now when it exists, and by `run` otherwise.
    [ -d "/proc/sys/net/ipv4/conf/$BRIDGE" ] && echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/route_localnet"
    return 0
}

run() {
    [ -f "$W/stack.env" ] || ctr_die 1 "no cluster: run \`bash scripts/e2e-cluster.sh up\` first"
    PYTHONPATH="$REPO" "$DDAD_HOME/venv/bin/python" -m devtools.cluster --workdir "$W" --kubectl "$BIN/kubectl" \
        --kubeconfig "$KUBECONFIG_FILE" --helm "$BIN/helm" --node-ip "$(node_ip)" --bridge "$BRIDGE" \
        --namespace "$NAMESPACE" --release "$RELEASE" --values "$REPO/helm/ddad-inspection/values-single-node-cpu.yaml" \
        ${DDAD_CLUSTER_VALUES:+--values "$DDAD_CLUSTER_VALUES"} "$@"
}

down() {
    local name
    if [ -x "$BIN/kubectl" ] && [ -f "$KUBECONFIG_FILE" ] && [ -f "$W/pids/kube-apiserver" ]; then
        kubectl delete namespace "$NAMESPACE" --wait=true --timeout=120s >/dev/null 2>&1 || true
    fi
    for name in stack kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done
    # containerd last: the pods' containers (shims) are stopped through it
    if [ -S "$CONTAINERD_SOCK" ]; then
        for name in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks list -q 2>/dev/null); do
            ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s KILL "$name" >/dev/null 2>&1 || true
        done
    fi
    stop containerd
    while iptables -t nat -S PREROUTING | grep -q ddad-e2e; do
        iptables -t nat -S PREROUTING | grep ddad-e2e | head -1 | sed 's/^-A/-D/' | xargs iptables -t nat
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
    grep -s " $W/kubelet/root" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
    grep -s " $W/containerd" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
    rm -rf "$W/etcd" "$W/kubelet/root" "$W/stack" "$W/stack.env" "$W/dnat-ports"
    say "down (images stay loaded in $W/containerd; rm -rf $W to drop them)"
}

case "${1:-}" in
    up) up ;;
    run) shift; run "$@" ;;
    down) down ;;
    check) preflight; say "this machine can run the node (root, cgroups, overlayfs, netns, bridge, iptables NAT, commands, images)" ;;
    *) echo "usage: bash scripts/e2e-cluster.sh up|run|down|check" >&2; exit 1 ;;
esac
