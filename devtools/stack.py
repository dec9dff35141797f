"""``inspection-stack`` / ``python -m devtools.stack up``: Kafka, Redis and an S3 server on this machine, by hand.

Flow step: none (the servers underneath every step). In the foreground it

1. starts the embedded servers of ``devtools.localstack`` (Kafka KRaft, Redis, s3proxy) on free loopback ports;
2. creates the product's topics (``services._kafka.default_topic_specs``) and the bucket for masks and claim checks;
3. prints, and writes to ``<workdir>/stack.env``, the environment for the three services (``INGESTOR_*``,
   ``WORKER_*``, ``ALERTER_*``) and for the tests (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``S3_*``, ``AWS_*``);
4. waits; Ctrl-C (or SIGTERM) stops every server, as does one of them dying (exit 1, its log named).

In another terminal: ``set -a; . ~/.cache/ddad-inspection/stack/stack.env; set +a``, then run the services (the
root README walks through it). Data lives in the work dir and is wiped at the next ``up``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from devtools.localstack import LocalStack, ServerNotAvailable, ServerStartError, ddad_home, free_port
from services._kafka import default_topic_specs, ensure_topics
from services.contracts.topics import Topics

SERVICES = ("INGESTOR", "WORKER", "ALERTER")


def service_env(stack: LocalStack, topic_prefix: str, bucket: str) -> dict[str, str]:
    """Every variable the three services (and the tests) need to use this stack, in print order.

    Each service gets its own health/metrics port, so all three fit on one machine.
    """
    assert stack.kafka and stack.redis and stack.s3
    s3 = stack.s3
    env = dict(stack.env())  # KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, S3_ENDPOINT_URL, AWS_*: what the tests read
    for service in SERVICES:
        values = {"KAFKA_BOOTSTRAP_SERVERS": stack.kafka.bootstrap_servers, "HTTP_PORT": str(free_port())}
        if service != "INGESTOR":  # the ingestor never touches Redis
            values["REDIS_URL"] = stack.redis.url
        if topic_prefix:
            values["TOPIC_PREFIX"] = topic_prefix
            if service != "INGESTOR":
                values["REDIS_KEY_PREFIX"] = topic_prefix
        if service != "ALERTER":  # the alerter never touches the object store
            values.update(
                OBJECT_STORE_URL=f"s3://{bucket}/objects",
                S3_ENDPOINT_URL=s3.endpoint_url,
                S3_ACCESS_KEY_ID=s3.access_key,
                S3_SECRET_ACCESS_KEY=s3.secret_key,
                S3_REGION=s3.region,
            )
        env.update({f"{service}_{k}": v for k, v in values.items()})
    return env


def _env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def up(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Start the stack, print its environment, and serve until ``stop`` (Ctrl-C) or a server dies."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    workdir = args.workdir.resolve()
    env_file = (args.env_file or workdir / "stack.env").resolve()
    print(f"[stack] starting Kafka, Redis and the S3 server under {workdir} ...", flush=True)
    stack = LocalStack(
        workdir, num_partitions=args.frames_partitions, buckets=(args.bucket,), kafka_advertise=args.kafka_advertise
    )
    try:
        stack.start()
    except (ServerNotAvailable, ServerStartError) as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"[stack] {first}" + (" (server log above in the work dir)" if rest else ""), file=sys.stderr)
        return 2
    try:
        topics = Topics(args.topic_prefix)
        created = ensure_topics(
            {"bootstrap_servers": [stack.kafka.bootstrap_servers], "client_id": "inspection-stack"},
            default_topic_specs(topics, args.frames_partitions),
        )
        env = service_env(stack, args.topic_prefix, args.bucket)
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text("\n".join(_env_lines(env)) + "\n")
        print(f"[stack] kafka {stack.kafka.bootstrap_servers}  redis {stack.redis.url}  s3 {stack.s3.endpoint_url}")
        print(f"[stack] topics {', '.join(topics.all())} ({len(created)} created); bucket {args.bucket}")
        print("[stack] environment for the services (also in the env file below):")
        print("\n".join(_env_lines(env)))
        print(f"[stack] env file: {env_file}  (in another shell: set -a; . {shlex.quote(str(env_file))}; set +a)")
        print("[stack] running; Ctrl-C stops everything", flush=True)
        while not stop.wait(1.0):
            dead = [h for h in stack.handles() if not h.running]
            if dead:
                h = dead[0]
                print(
                    f"[stack] {h.name} exited with code {h.process.returncode}; logs: "
                    f"{', '.join(str(p) for p in h.log_paths)}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return 0
    finally:
        print("[stack] stopping ...", flush=True)
        stack.stop()
        print("[stack] stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; ``up`` is the default command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["up", *argv]
    parser = argparse.ArgumentParser(
        prog="inspection-stack",
        description="Kafka, Redis and an S3 server on this "
        "machine, in the foreground, for running the services by hand.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start Kafka, Redis and S3 in the foreground (the default command)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=ddad_home() / "stack",
        help="data and logs of the servers, wiped at start (default: $DDAD_HOME/stack)",
    )
    p.add_argument("--env-file", type=Path, help="where to write the environment (default: WORKDIR/stack.env)")
    p.add_argument("--topic-prefix", default="", help="per-environment topic and Redis key prefix")
    p.add_argument("--frames-partitions", type=int, default=6, help="partitions of frames and results")
    p.add_argument("--bucket", default="inspection", help="S3 bucket for masks, heatmaps and claim checks")
    p.add_argument(
        "--kafka-advertise",
        metavar="ADDRESS",
        help="an address of this machine that containers or pods reach: Kafka listens on every interface and "
        "advertises it (default: loopback only)",
    )
    return up(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
