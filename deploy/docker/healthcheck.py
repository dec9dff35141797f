"""Docker HEALTHCHECK of every image: GET /healthz on the service's <PREFIX>_HTTP_PORT (default 8080).

Exit 0 when the service answers 200 within 4 s, 1 otherwise (Docker's contract). Kubernetes uses its own probes.
"""

import os
import sys
import urllib.request

PREFIXES = ("WORKER_", "INGESTOR_", "ALERTER_", "DASHBOARD_")
port = next((os.environ[f"{p}HTTP_PORT"] for p in PREFIXES if os.environ.get(f"{p}HTTP_PORT")), "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: http://127.0.0.1:{port}/healthz: {exc}", file=sys.stderr)
    sys.exit(1)
