"""The dashboard's own Prometheus metrics (``inspection_`` prefix, like ``services._observability``).

Flow step: none (cross-cutting). Defined once at import (the default registry refuses a second definition).
Consumer lag goes to the shared ``inspection_consumer_lag{service="dashboard"}``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS = Counter("inspection_dashboard_records_total", "Records the dashboard read, by topic and outcome "
                  "(ok, invalid).", ["topic", "outcome"])
FEEDBACK = Counter("inspection_feedback_total", "Operator actions on alerts, by action.", ["action"])
FEEDBACK_PUBLISHED = Counter("inspection_feedback_published_total", "Feedback records acknowledged by Kafka.")
STREAM_CLIENTS = Gauge("inspection_dashboard_stream_clients", "Browsers connected to the live stream.")
DEPENDENCY_UP = Gauge("inspection_dashboard_dependency_up", "1 while the dashboard reaches the dependency.",
                      ["dependency"])
