#!/bin/bash
# Entry point of the Kafka image (deploy/docker/kafka.Dockerfile): server.properties from the environment, the KRaft
# storage formatted on the first start, then the broker in the foreground (it gets the container's signals).
#
# Every KAFKA_<NAME> variable becomes the broker property <name> as in the public image apache/kafka: lower case,
# "_" -> ".", "__" -> "_", "___" -> "-" (KAFKA_NODE_ID=1 -> node.id=1), over the defaults of one combined broker and
# controller below. Not properties: KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS and KAFKA_OPTS (the JVM's options,
# with Kafka's own defaults), and CLUSTER_ID (the id the storage is formatted with on the first start; random when
# unset). The file is written to $TMPDIR/kafka (default /tmp/kafka), so the root file system may be read-only.
set -euo pipefail

declare -A props=(
    [node.id]=1
    [process.roles]="broker,controller"
    [listeners]="PLAINTEXT://:9092,CONTROLLER://:9093"
    [advertised.listeners]=PLAINTEXT://localhost:9092
    [controller.listener.names]=CONTROLLER
    [listener.security.protocol.map]="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    [controller.quorum.voters]=1@localhost:9093
    [log.dirs]=/var/lib/kafka/data
    [offsets.topic.replication.factor]=1
    [transaction.state.log.replication.factor]=1
    [transaction.state.log.min.isr]=1
    [share.coordinator.state.topic.replication.factor]=1
    [share.coordinator.state.topic.min.isr]=1
)
for var in $(compgen -e); do
    case "$var" in
        KAFKA_HEAP_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_OPTS) continue ;;
        KAFKA_?*) ;;
        *) continue ;;
    esac
    key="${var#KAFKA_}"
    key="${key,,}"
    key="${key//___/-}"
    key="${key//__/@}"   # no property name has an "@": a stand-in for "_" while single "_" become "."
    key="${key//_/.}"
    props[${key//@/_}]="${!var}"
done

config="${TMPDIR:-/tmp}/kafka/server.properties"
mkdir -p "$(dirname "$config")"
umask 077   # the file may hold SASL or TLS passwords
for key in "${!props[@]}"; do
    printf '%s=%s\n' "$key" "${props[$key]//\\/\\\\}"   # a backslash is the escape character of a .properties file
done | sort >"$config"
umask 022

classpath='/opt/kafka/libs/*'
log4j=-Dlog4j2.configurationFile=/opt/kafka/kafka-log4j2.properties
read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
read -ra jvm <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
read -ra extra <<<"${KAFKA_OPTS:-}"

data="${props[metadata.log.dir]:-${props[log.dirs]%%,*}}"
if [ ! -f "$data/meta.properties" ]; then
    cluster_id="${CLUSTER_ID:-}"
    # Kafka's own format: 16 random bytes, URL-safe base64 without padding, never starting with "-" (an option).
    while [ -z "$cluster_id" ] || [ "${cluster_id:0:1}" = - ]; do
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    echo "kafka: formatting $data for cluster $cluster_id (first start)"
    java -Xmx256m "$log4j" -cp "$classpath" kafka.tools.StorageTool format --cluster-id "$cluster_id" \
        --config "$config"
fi
exec java "${heap[@]}" "${jvm[@]}" "${extra[@]}" "$log4j" -cp "$classpath" kafka.Kafka "$config"
