"""``python -m services.alerter`` / ``inspection-alerter``: run the alerter, or change a runtime override.

Flow step: process lifecycle around ``services.alerter.loop``. The ``override`` subcommand is the operator's knob::

    python -m services.alerter override --camera cam1 [--product p1] --sensitivity 0.7 --actor alice --reason "glare"
    python -m services.alerter override --camera cam1 --clear --actor alice
    python -m services.alerter calibrate [--apply --actor alice]   # thresholds from feedback (feedback.py)

It writes the Redis override and an audit entry in one transaction; running alerters pick it up within
``ALERTER_OVERRIDES_REFRESH_S``. Start-up (bundle calibration, Redis, Kafka) fails with one line and exit status 2.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before numpy loads

import argparse
import os
import sys
import threading

from services import _observability as obs
from services._config import EXIT_BAD_CONFIG, StartupError, load_settings, run_main
from services._kafka import check_kafka, make_consumer, make_producer
from services._redis import AlertStore, OverrideStore, connect_checked
from services._serve import begin_serve
from services.alerter.config import AlerterSettings
from services.alerter.loop import SERVICE, AlerterLoop, calibration_rules
from services.alerter.rules import AlertRules, Rule, RuleBook


def build_rulebook(settings: AlerterSettings) -> RuleBook:
    """Service defaults, then the bundle calibration's defaults and rules, then the configured camera rules.

    Raises:
        StartupError: ``bundle_path`` is set but holds no readable ``bundle.json``.
    """
    defaults = settings.default_rule()
    calib_sens, calib_rules = calibration_rules(settings.bundle_path)
    if calib_sens is not None and "ALERTER_SENSITIVITY" not in os.environ:
        defaults = Rule(**{**defaults.__dict__, "sensitivity": calib_sens})
    return RuleBook(defaults, configured={**calib_rules, **settings.camera_rules})


def _rules_step(settings: AlerterSettings) -> tuple[RuleBook, str]:
    book = build_rulebook(settings)
    source = f"calibration of {settings.bundle_path}" if settings.bundle_path else "service defaults (no bundle)"
    return book, f"{source}: default threshold {book.defaults.threshold:g}, {len(book.configured)} camera rule(s)"


def serve(settings: AlerterSettings, check_only: bool = False, stop: threading.Event | None = None) -> int:
    """Run the alerter until ``stop`` is set (or SIGTERM/SIGINT in the main thread).

    Raises:
        StartupError: unreadable bundle, Redis or Kafka unreachable (one line, see run_main).
    """
    start = begin_serve(SERVICE, settings, check_only, stop)
    log, health, stop, topics, kafka, timeout, checks = (
        start.log, start.health, start.stop, start.topics, start.kafka, start.timeout, start.checks)
    book = checks.run("rules", "bundle_path", lambda: _rules_step(settings))
    redis_client = checks.run("redis", "redis_url", lambda: connect_checked(settings.redis_url, timeout))
    missing_topics = checks.run("kafka", "kafka_bootstrap_servers",
                                lambda: check_kafka(kafka, timeout, [topics.results, topics.defects]))
    server = None if check_only else checks.run(
        "http", "http_port", lambda: (obs.start_http_server(health, settings.http_port), ""))
    if not start.finish(check_only, missing_topics):
        return 0
    consumer = make_consumer(kafka, settings.group_id, assignor=settings.kafka_assignor,
                             group_instance_id=settings.group_instance_id, max_poll_records=settings.max_poll_records,
                             session_timeout_ms=settings.session_timeout_ms,
                             heartbeat_interval_ms=settings.heartbeat_interval_ms)
    producer = make_producer(kafka)
    loop = AlerterLoop(consumer, producer, AlertRules(book),
                       AlertStore(redis_client, settings.alert_ttl_s, settings.redis_key_prefix),
                       OverrideStore(redis_client, settings.redis_key_prefix), topics, log,
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
    try:
        client, _ = connect_checked(settings.redis_url, settings.connect_timeout_s)
    except StartupError as exc:
        print(f"{SERVICE} override: redis: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = OverrideStore(client, settings.redis_key_prefix)
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
    if argv and argv[0] == "calibrate":  # thresholds from operators' feedback (services/alerter/feedback.py)
        from services.alerter.feedback import calibrate

        return calibrate(argv[1:])
    return run_main(AlerterSettings, lambda s, check: serve(s, check), argv,
                    "Inspection alerter: results -> per-camera rules -> defects", SERVICE)


if __name__ == "__main__":
    sys.exit(main())
