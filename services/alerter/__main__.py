"""``python -m services.alerter`` / ``inspection-alerter``: run the alerter, or change a runtime override.

Flow step: process lifecycle around ``services.alerter.loop``. The ``override`` subcommand is the operator's knob::

    python -m services.alerter override --camera cam1 [--product p1] --sensitivity 0.7 --actor alice --reason "glare"
    python -m services.alerter override --camera cam1 --clear --actor alice

It writes the Redis override and an audit entry in one transaction; running alerters pick it up within
``ALERTER_OVERRIDES_REFRESH_S``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from services import _observability as obs
from services._config import EXIT_BAD_CONFIG, load_settings, run_main
from services._kafka import make_consumer, make_producer
from services._redis import AlertStore, OverrideStore, connect
from services.alerter.config import AlerterSettings
from services.alerter.loop import SERVICE, AlerterLoop, calibration_rules
from services.alerter.rules import AlertRules, Rule, RuleBook
from services.contracts.topics import Topics


def build_rulebook(settings: AlerterSettings) -> RuleBook:
    """Service defaults, then the bundle calibration's defaults and rules, then the configured camera rules."""
    defaults = settings.default_rule()
    calib_sens, calib_rules = calibration_rules(settings.bundle_path)
    if calib_sens is not None and "ALERTER_SENSITIVITY" not in os.environ:
        defaults = Rule(**{**defaults.__dict__, "sensitivity": calib_sens})
    return RuleBook(defaults, configured={**calib_rules, **settings.camera_rules})


def serve(settings: AlerterSettings, check_only: bool = False, stop: threading.Event | None = None) -> int:
    """Run the alerter until ``stop`` is set (or SIGTERM/SIGINT in the main thread)."""
    log = obs.configure_logging(SERVICE, settings.log_level, settings.log_json)
    health = obs.Health()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    redis_client = connect(settings.redis_url)
    redis_client.ping()
    book = build_rulebook(settings)
    if check_only:
        return 0
    server = obs.start_http_server(health, settings.http_port)
    consumer = make_consumer(settings.kafka_kwargs(SERVICE), settings.group_id, assignor=settings.kafka_assignor,
                             group_instance_id=settings.group_instance_id, max_poll_records=settings.max_poll_records,
                             session_timeout_ms=settings.session_timeout_ms,
                             heartbeat_interval_ms=settings.heartbeat_interval_ms)
    producer = make_producer(settings.kafka_kwargs(SERVICE))
    loop = AlerterLoop(consumer, producer, AlertRules(book),
                       AlertStore(redis_client, settings.alert_ttl_s, settings.redis_key_prefix),
                       OverrideStore(redis_client, settings.redis_key_prefix), Topics(settings.topic_prefix), log,
                       health, settings.overrides_refresh_s, settings.max_poll_records)
    loop.subscribe()
    health.set_ready(True)
    log.info("alerter_ready", defaults=book.defaults.__dict__, configured=book.configured)
    try:
        loop.run(stop)
    finally:
        producer.close(timeout=10)
        if server is not None:
            server.shutdown()
    log.info("stopped", alerts=loop.alerts_raised)
    return 0


def override(argv: list[str]) -> int:
    """The ``override`` subcommand (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="services.alerter override")
    parser.add_argument("--camera", required=True)
    parser.add_argument("--product")
    parser.add_argument("--sensitivity", type=float)
    parser.add_argument("--min-score", type=float)
    parser.add_argument("--clear", action="store_true", help="remove every override of the scope")
    parser.add_argument("--actor", required=True, help="who changes it (goes into the audit log)")
    parser.add_argument("--reason", default="")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(AlerterSettings)
    except ValueError as exc:
        print(f"AlerterSettings: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = OverrideStore(connect(settings.redis_url), settings.redis_key_prefix)
    values = ({f: None for f in OverrideStore.FIELDS} if args.clear else
              {k: v for k, v in (("sensitivity", args.sensitivity), ("min_score", args.min_score)) if v is not None})
    if not values:
        parser.error("give --sensitivity, --min-score or --clear")
    try:
        store.set(OverrideStore.scope(args.camera, args.product), args.actor, args.reason, **values)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"override {OverrideStore.scope(args.camera, args.product)}: {values}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "override":
        return override(argv[1:])
    return run_main(AlerterSettings, lambda s, check: serve(s, check), argv,
                    "Inspection alerter: results -> per-camera rules -> defects")


if __name__ == "__main__":
    sys.exit(main())
