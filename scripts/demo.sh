#!/usr/bin/env bash
# scripts/demo.sh - the main job: bootstrap (idempotent), then the end-to-end streaming demo (`python -m services.demo`).
#
#   bash scripts/demo.sh [demo options]       # options go to services.demo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Only what the demo runs: the venv, the Kafka and s3proxy jars, Redis (no test tools: Go builds, Chromium, etcd).
DDAD_SETUP=demo
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh

# Checked at run time: services/demo.py arrives with the streaming issue, after this script.
if [ ! -f services/demo.py ]; then
    echo "demo.sh: the demo is a placeholder until the streaming issue lands (services/demo.py does not exist yet);"
    echo "demo.sh: set-up is complete - run 'bash scripts/test.sh' to exercise the real Kafka, Redis and S3 servers."
    exit 0
fi
exec "$PY" -m services.demo "$@"
