"""``python -m services.teacher``: turn operators' marks of one product into its nominal overlay versions.

``python -m services.teacher export --out DIR`` writes the product's labelled set instead (``export.py``).

Flow step: process lifecycle around ``services.teacher.loop``. Start-up checks Redis, the object store, Kafka and
the bundle (which must have the patch k-NN term) and loads the overlay in force; a failure is one line on stderr
and exit status 2. SIGTERM stops after the mark being applied.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before numpy and torch load

import argparse
import sys
import threading
from typing import Any

from services import _observability as obs
from services._config import EXIT_BAD_CONFIG, StartupError, load_settings, run_main
from services._kafka import check_kafka, make_consumer
from services._object_store import open_checked
from services._overlays import OverlayStore
from services._redis import connect_checked
from services._serve import begin_serve
from services.alerter.feedback import read_feedback
from services.contracts.topics import Topics
from services.teacher.config import TeacherSettings
from services.teacher.export import export_labelled_set
from services.teacher.loop import SERVICE, Teacher, TeacherLoop
from services.worker.inference import load_detector


def _teacher_step(settings: TeacherSettings, redis_client: Any, store: Any, log: Any) -> tuple[Teacher, str]:
    """The ``model`` start-up step: the bundle, and the overlay in force taught on it."""
    from ddad_core.overlay import OverlayError

    if redis_client is None or store is None:
        raise StartupError("the overlay in force needs Redis and the object store")
    pipe = load_detector(settings.bundle_path, settings.device)
    try:
        teacher = Teacher(
            pipe,
            OverlayStore(redis_client, store, settings.redis_key_prefix),
            store,
            settings.product_id,
            settings.region,
            log,
        )
    except OverlayError as exc:
        raise StartupError(f"bundle {settings.bundle_path}: {exc}") from None
    return teacher, f"{settings.bundle_path}: product {settings.product_id}, overlay version {teacher.overlay.version}"


def serve(
    settings: TeacherSettings, check_only: bool = False, stop: threading.Event | None = None, on_loop: Any = None
) -> int:
    """Run the teacher until ``stop`` is set (or SIGTERM/SIGINT in the main thread).

    Raises:
        StartupError: a dependency is unreachable, or the bundle cannot take an overlay (one line, see run_main).
    """
    start = begin_serve(SERVICE, settings, check_only, stop)
    log, health, stop, topics, kafka, timeout, checks = (
        start.log,
        start.health,
        start.stop,
        start.topics,
        start.kafka,
        start.timeout,
        start.checks,
    )
    redis_client = checks.run("redis", "redis_url", lambda: connect_checked(settings.redis_url, timeout))
    store = checks.run(
        "object store",
        "object_store_url",
        lambda: open_checked(settings.object_store_url, settings.s3_client_kwargs(), timeout),
    )
    missing_topics = checks.run(
        "kafka", "kafka_bootstrap_servers", lambda: check_kafka(kafka, timeout, [topics.feedback])
    )
    teacher = checks.run("model", "bundle_path", lambda: _teacher_step(settings, redis_client, store, log))
    server = (
        None
        if check_only
        else checks.run("http", "http_port", lambda: (obs.start_http_server(health, settings.http_port), ""))
    )
    if not start.finish(check_only, missing_topics):
        return 0
    consumer = make_consumer(
        kafka,
        settings.group_id,
        assignor=settings.kafka_assignor,
        max_poll_records=settings.max_poll_records,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    loop = TeacherLoop(consumer, teacher, topics.feedback, log, health)
    loop.subscribe()
    if on_loop is not None:
        on_loop(loop)
    health.set_ready(True)
    log.info("teacher_ready", product_id=settings.product_id, version=teacher.overlay.version)
    try:
        loop.run(stop)
    finally:
        if server is not None:
            server.shutdown()
    log.info("stopped", marks=len(loop.outcomes))
    return 0


def export(argv: list[str]) -> int:
    """The ``export`` subcommand: the product's labelled set in MVTec layout (``services/teacher/export.py``)."""
    parser = argparse.ArgumentParser(prog="python -m services.teacher export")
    parser.add_argument("--out", required=True, help="new folder for the labelled set")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(TeacherSettings)
        store, _ = open_checked(settings.object_store_url, settings.s3_client_kwargs(), settings.connect_timeout_s)
        topic = Topics(settings.topic_prefix).feedback
        records, invalid = read_feedback(settings.kafka_kwargs(SERVICE), topic, settings.connect_timeout_s)
        labels = export_labelled_set(records, settings.product_id, store, args.out)
    except (ValueError, StartupError, OSError, TimeoutError) as exc:
        print(f"{SERVICE} export: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(
        f"labelled set of {settings.product_id} in {args.out}: {labels['counts']['good']} good (false alarms), "
        f"{labels['counts']['defect']} defects, {len(labels['skipped'])} skipped (frame not kept), "
        f"{invalid} invalid feedback records"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "export":
        return export(argv[1:])
    return run_main(
        TeacherSettings,
        lambda s, check: serve(s, check),
        argv,
        "Inspection teacher: feedback marks -> the product's nominal overlay",
        SERVICE,
    )


if __name__ == "__main__":
    sys.exit(main())
