#!/bin/bash
# Entry point of the S3 image (deploy/docker/s3proxy.Dockerfile): s3proxy on port 9000 with a filesystem blob store,
# every bucket a folder under DATA_DIR (the argument; default /data), requests signed (AWS v2 or v4) with the key
# S3PROXY_IDENTITY and the secret S3PROXY_CREDENTIAL. JAVA_OPTS replaces the JVM options (default: a 256 MB heap).
# The properties file is written to $TMPDIR/s3proxy (default /tmp/s3proxy), so the root file system may be read-only.
set -euo pipefail
: "${S3PROXY_IDENTITY:?set S3PROXY_IDENTITY (the access key id clients sign with)}"
: "${S3PROXY_CREDENTIAL:?set S3PROXY_CREDENTIAL (the secret access key)}"
data="${1:-/data}"

config="${TMPDIR:-/tmp}/s3proxy/s3proxy.properties"
mkdir -p "$(dirname "$config")"
umask 077   # it holds the secret
{
    echo "s3proxy.endpoint=http://0.0.0.0:9000"
    echo "s3proxy.authorization=aws-v2-or-v4"
    echo "s3proxy.identity=${S3PROXY_IDENTITY//\\/\\\\}"   # a backslash is the escape character of a .properties file
    echo "s3proxy.credential=${S3PROXY_CREDENTIAL//\\/\\\\}"
    echo "jclouds.provider=filesystem"
    echo "jclouds.filesystem.basedir=$data"
} >"$config"
umask 022

read -ra jvm <<<"${JAVA_OPTS:--Xmx256m -XX:+UseSerialGC -Djava.awt.headless=true}"
exec java "${jvm[@]}" -Dlogback.configurationFile=/opt/s3proxy/s3proxy-logback.xml -cp '/opt/s3proxy/libs/*' \
    org.gaul.s3proxy.Main --properties "$config"
