"""Real local servers for the tests and the demo: Apache Kafka (KRaft), Redis and an S3-compatible store (s3proxy).

Flow step: none of the camera -> Kafka -> worker -> Redis/S3 -> alerts stages; this is the plumbing underneath them when
no real cluster is configured (development only: the runtime images do not carry it). ``scripts/bootstrap.sh`` fetches
the binaries into a user cache dir (``$DDAD_HOME``, default ``~/.cache/ddad-inspection``); this package finds them
there and runs each server as a subprocess on free loopback ports, waits until it really answers (a Kafka metadata
request, a Redis PING, an S3 ListBuckets), and stops it again (SIGTERM, then SIGKILL). Logs stay in the given work
dir and their tail is part of every start-up error.

One module per server (``kafka``, ``redis``, ``s3``); ``common`` holds what they share (the pinned versions, finding
binaries, free ports, process handling); ``LocalStack`` here runs all three.

Example:
    >>> with LocalStack(Path("/tmp/stack")) as stack:       # doctest: +SKIP
    ...     print(stack.env()["KAFKA_BOOTSTRAP_SERVERS"])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devtools.localstack.common import (
    HELM_VERSION,
    KAFKA_VERSION,
    KUBECONFORM_VERSION,
    LOOPBACK,
    S3PROXY_VERSION,
    Pending,
    ServerHandle,
    ServerNotAvailable,
    ServerStartError,
    ddad_home,
    find_go_tool,
    find_java,
    free_port,
    port_is_free,
)
from devtools.localstack.kafka import KafkaHandle, kafka_libs, launch_kafka, start_kafka
from devtools.localstack.redis import RedisHandle, find_redis_server, launch_redis, start_redis
from devtools.localstack.s3 import (
    S3_ACCESS_KEY,
    S3_REGION,
    S3_SECRET_KEY,
    S3Handle,
    create_bucket,
    launch_s3,
    s3proxy_libs,
    start_s3,
)

__all__ = [
    "HELM_VERSION",
    "KAFKA_VERSION",
    "KUBECONFORM_VERSION",
    "LOOPBACK",
    "S3PROXY_VERSION",
    "S3_ACCESS_KEY",
    "S3_REGION",
    "S3_SECRET_KEY",
    "KafkaHandle",
    "LocalStack",
    "RedisHandle",
    "S3Handle",
    "ServerHandle",
    "ServerNotAvailable",
    "ServerStartError",
    "create_bucket",
    "ddad_home",
    "find_go_tool",
    "find_java",
    "find_redis_server",
    "free_port",
    "kafka_libs",
    "port_is_free",
    "s3proxy_libs",
    "start_kafka",
    "start_redis",
    "start_s3",
]


class LocalStack:
    """Context manager running Kafka, Redis and S3 locally; stops them all on exit (also after errors).

    The three are launched first and waited on afterwards, so their JVM start-ups overlap.

    Args:
        workdir: parent dir; each server gets a subfolder.
        kafka, redis, s3: which servers to run.
        num_partitions: partitions of auto-created Kafka topics.
        buckets: S3 buckets to create once the store is up.
        kafka_advertise: an address of this machine that other network namespaces reach (a Kubernetes node's
            IP): Kafka then listens on every interface and advertises that address, so clients in pods can follow
            the broker's metadata; None keeps it on loopback.
    """

    def __init__(
        self,
        workdir: Path,
        kafka: bool = True,
        redis: bool = True,
        s3: bool = True,
        num_partitions: int = 1,
        buckets: tuple[str, ...] = (),
        kafka_advertise: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.kafka_advertise = kafka_advertise
        self._want = {"kafka": kafka, "redis": redis, "s3": s3}
        self.num_partitions = num_partitions
        self.buckets = buckets
        self.kafka: KafkaHandle | None = None
        self.redis: RedisHandle | None = None
        self.s3: S3Handle | None = None

    def start(self) -> LocalStack:
        """Launch and wait for the selected servers; on any failure stop what already runs and re-raise."""
        kafka_port, controller_port = free_port(), free_port()
        kafka_extra = {}
        if self.kafka_advertise:
            kafka_extra = {
                "listeners": f"PLAINTEXT://0.0.0.0:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.kafka_advertise}:{kafka_port}",
            }
        launchers: dict[str, Callable[[], Pending]] = {
            "kafka": lambda: launch_kafka(
                self.workdir / "kafka", kafka_port, controller_port, self.num_partitions, 512, kafka_extra, 90.0
            ),
            "redis": lambda: launch_redis(self.workdir / "redis", free_port(), 30.0),
            "s3": lambda: launch_s3(self.workdir / "s3", free_port(), 256, 60.0),
        }
        restart = {
            "kafka": lambda: start_kafka(
                self.workdir / "kafka",
                kafka_port if kafka_extra else None,
                controller_port if kafka_extra else None,
                num_partitions=self.num_partitions,
                extra_config=kafka_extra,
            ),
            "redis": lambda: start_redis(self.workdir / "redis"),
            "s3": lambda: start_s3(self.workdir / "s3"),
        }
        pending: dict[str, Pending] = {}
        try:
            for name, launch in launchers.items():
                if self._want[name]:
                    pending[name] = launch()
            for name, p in pending.items():
                try:
                    handle = p.wait()
                except ServerStartError as exc:
                    if not exc.port_clash:
                        raise
                    handle = restart[name]()  # lost a port race: the retrying single-server start
                setattr(self, name, handle)
            if self.s3 is not None:
                for bucket in self.buckets:
                    self.s3.create_bucket(bucket)
        except BaseException:
            for p in pending.values():
                p.handle.stop()
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server that runs (Kafka first: its shutdown is the slowest)."""
        for handle in (self.kafka, self.s3, self.redis):
            if handle is not None:
                handle.stop()

    def handles(self) -> list[ServerHandle]:
        """The running servers' handles."""
        return [h for h in (self.kafka, self.redis, self.s3) if h is not None]

    def env(self) -> dict[str, str]:
        """The environment variables that point services (and the tests) at these servers."""
        env: dict[str, str] = {}
        if self.kafka:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
        if self.redis:
            env["REDIS_URL"] = self.redis.url
        if self.s3:
            env.update(
                S3_ENDPOINT_URL=self.s3.endpoint_url,
                AWS_ACCESS_KEY_ID=self.s3.access_key,
                AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
                AWS_REGION=self.s3.region,
            )
        return env

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
