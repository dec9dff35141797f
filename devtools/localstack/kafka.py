"""A local single-node Apache Kafka (KRaft: combined broker and controller), optionally with a SASL_SSL listener.

Flow step: none (development tooling). The broker jars come from ``scripts/bootstrap.sh`` (``$DDAD_HOME/kafka``); the
broker runs as a JVM subprocess on free loopback ports and is ready once a metadata request lists it.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.localstack.common import (
    KAFKA_VERSION,
    LOOPBACK,
    Pending,
    ServerHandle,
    ServerNotAvailable,
    ServerStartError,
    ddad_home,
    find_java,
    free_port,
    fresh_dir,
    java_cmd,
    pick_port,
    require_jars,
    spawn,
    start_with_retry,
)


def kafka_libs() -> Path:
    """Directory with the Kafka broker jars (``$DDAD_KAFKA_LIBS`` overrides the cache)."""
    return Path(os.environ.get("DDAD_KAFKA_LIBS") or ddad_home() / "kafka" / KAFKA_VERSION / "libs")


@dataclass
class KafkaHandle(ServerHandle):
    """A single-node KRaft Kafka (combined broker + controller)."""

    bootstrap_servers: str = ""
    controller_port: int = 0
    #: ``127.0.0.1:<port>`` of the SASL_SSL (SCRAM-SHA-512) listener, when started with ``sasl_users``.
    sasl_ssl_bootstrap: str = ""
    #: PEM file with the broker's self-signed certificate (the CA a TLS client must trust).
    ca_file: str = ""
    sasl_users: dict[str, str] = field(default_factory=dict, repr=False)


_KAFKA_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _kafka_cluster_id() -> str:
    # Kafka's own format: 16 random bytes, URL-safe base64 without padding; it never hands out one starting with "-"
    # because the CLI would read that as a flag.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


_KEYSTORE_PASSWORD = "ddad-local-keystore"


def _make_keystore(workdir: Path, java: str) -> Path:
    """A self-signed broker certificate for 127.0.0.1 / localhost with the JDK's keytool (PKCS12) and its PEM export.

    Returns:
        The PEM file a TLS client trusts (``ssl_cafile``).
    """
    keytool = str(Path(java).with_name("keytool"))
    if not os.access(keytool, os.X_OK):
        keytool = shutil.which("keytool") or ""
    if not keytool:
        raise ServerNotAvailable(
            "keytool (part of the JDK) not found next to java nor on PATH: needed for the "
            "TLS listener of the local Kafka"
        )
    store = workdir / "broker.p12"
    for args in (
        [
            "-genkeypair",
            "-alias",
            "broker",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "7",
            "-dname",
            "CN=localhost",
            "-ext",
            f"SAN=ip:{LOOPBACK},dns:localhost",
        ],
        ["-exportcert", "-rfc", "-alias", "broker", "-file", str(workdir / "ca.pem")],
    ):
        done = subprocess.run(
            [
                keytool,
                *args,
                "-keystore",
                str(store),
                "-storetype",
                "PKCS12",
                "-storepass",
                _KEYSTORE_PASSWORD,
                "-keypass",
                _KEYSTORE_PASSWORD,
                "-noprompt",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise ServerStartError(f"keytool {args[0]} failed (exit {done.returncode}): {done.stdout}{done.stderr}")
    return workdir / "ca.pem"


def _sasl_ssl_properties(sasl_port: int, keystore: Path) -> dict[str, Any]:
    """A second client listener, SASL_SSL with SCRAM-SHA-512 (users are added when the storage is formatted)."""
    return {
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": _KEYSTORE_PASSWORD,
        "ssl.key.password": _KEYSTORE_PASSWORD,
        "ssl.client.auth": "none",
    }


def _kafka_properties(
    workdir: Path, port: int, controller_port: int, num_partitions: int, extra: dict, sasl_port: int | None = None
) -> str:
    listeners = f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}"
    advertised = f"PLAINTEXT://{LOOPBACK}:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if sasl_port:
        listeners += f",SASL_SSL://{LOOPBACK}:{sasl_port}"
        advertised += f",SASL_SSL://{LOOPBACK}:{sasl_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    props: dict[str, Any] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": protocols,
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": num_partitions,
        "default.replication.factor": 1,
        "auto.create.topics.enable": "true",
        # One node: every internal topic must live with replication factor 1, or group and transaction
        # coordinators never come up.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Fast test settings: a single __consumer_offsets partition is created in a blink (50 by default take
        # seconds on 2 cores), and a group's first rebalance does not wait 3 s for more members.
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.num.partitions": 1,
        "group.initial.rebalance.delay.ms": 0,
        "group.min.session.timeout.ms": 1000,
        # Camera frames are JPEG/PNG payloads that can exceed the 1 MB default.
        "message.max.bytes": 16 * 1024 * 1024,
        "replica.fetch.max.bytes": 16 * 1024 * 1024,
    }
    if sasl_port:
        props.update(_sasl_ssl_properties(sasl_port, workdir / "broker.p12"))
    props.update(extra)
    return "".join(f"{k}={v}\n" for k, v in props.items())


def launch_kafka(
    workdir: Path,
    port: int,
    controller_port: int,
    num_partitions: int,
    heap_mb: int,
    extra_config: dict,
    timeout: float,
    sasl_port: int | None = None,
    sasl_users: dict[str, str] | None = None,
) -> Pending:
    """Launch the broker on the given ports without waiting for it (``start_kafka`` waits and retries)."""
    java, libs = find_java(), kafka_libs()
    require_jars(libs, f"Kafka {KAFKA_VERSION}", "DDAD_KAFKA_LIBS", "KAFKA_BOOTSTRAP_SERVERS")
    workdir = fresh_dir(workdir)
    ca_file = str(_make_keystore(workdir, java)) if sasl_port else ""
    (workdir / "server.properties").write_text(
        _kafka_properties(workdir, port, controller_port, num_partitions, extra_config, sasl_port)
    )
    (workdir / "log4j2.properties").write_text(_KAFKA_LOG4J2.format(log=workdir / "server.log"))
    log4j = f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}"

    # KRaft needs its metadata dir formatted with a cluster id before the first start; SCRAM users are written into
    # the metadata log by the same step.
    scram = [
        a
        for name, pw in (sasl_users or {}).items()
        for a in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={pw}]")
    ]
    fmt = subprocess.run(
        java_cmd(
            java,
            libs,
            256,
            log4j,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _kafka_cluster_id(),
            "-c",
            str(workdir / "server.properties"),
            *scram,
        ),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (workdir / "format.log").write_text(fmt.stdout + fmt.stderr)
    if fmt.returncode != 0:
        raise ServerStartError(
            f"kafka storage format failed (exit {fmt.returncode}); logs in {workdir}\n{fmt.stdout}{fmt.stderr}"
        )

    cmd = java_cmd(java, libs, heap_mb, log4j, "kafka.Kafka", str(workdir / "server.properties"))
    proc = spawn(cmd, workdir / "stdout.log", cwd=workdir)
    bootstrap = f"{LOOPBACK}:{port}"
    handle = KafkaHandle(
        "kafka",
        proc,
        workdir,
        [workdir / "server.log", workdir / "stdout.log"],
        cmd=cmd,
        spawn_log=workdir / "stdout.log",
        probe=lambda: _probe_kafka(bootstrap, port),
        start_timeout=timeout,
        bootstrap_servers=bootstrap,
        controller_port=controller_port,
        sasl_ssl_bootstrap=f"{LOOPBACK}:{sasl_port}" if sasl_port else "",
        ca_file=ca_file,
        sasl_users=dict(sasl_users or {}),
    )
    return Pending(handle, handle.probe, timeout)


def _probe_kafka(bootstrap: str, port: int) -> None:
    # A cheap TCP check first: kafka-python's client would otherwise spend its whole api-version timeout (and log
    # warnings) on a port that is not even open yet.
    with socket.create_connection((LOOPBACK, port), timeout=1):
        pass
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=5000,
        bootstrap_timeout_ms=5000,
        client_id="ddad-localstack-probe",
    )
    try:
        cluster = admin.describe_cluster()
        if not cluster.get("brokers"):
            raise RuntimeError("metadata lists no broker yet")
    finally:
        admin.close()


def start_kafka(
    workdir: Path,
    port: int | None = None,
    controller_port: int | None = None,
    num_partitions: int = 1,
    heap_mb: int = 512,
    extra_config: dict | None = None,
    timeout: float = 90.0,
    sasl_users: dict[str, str] | None = None,
) -> KafkaHandle:
    """Start a single-node KRaft Kafka (combined broker and controller) on loopback.

    Args:
        workdir: fresh dir for config, data and logs (wiped if it exists).
        port: client port; a free one when None.
        controller_port: KRaft controller port; a free one when None.
        num_partitions: partitions of auto-created topics.
        heap_mb: JVM max heap.
        extra_config: more ``server.properties`` entries (override the defaults).
        timeout: seconds to wait for a metadata answer.
        sasl_users: when given, a second client listener ``SASL_SSL`` (SCRAM-SHA-512 over TLS with a self-signed
            certificate made by keytool, ``handle.ca_file``) on ``handle.sasl_ssl_bootstrap``, with these users.

    Returns:
        The handle; ``handle.bootstrap_servers`` is ``"127.0.0.1:<port>"``.

    Raises:
        ServerNotAvailable: java or the jars are missing, or a given port is taken.
        ServerStartError: the broker exited or did not answer (message has the log tail).
    """
    auto = port is None and controller_port is None

    def launch() -> Pending:
        p = pick_port(port, "kafka client port")
        c = pick_port(controller_port, "kafka controller port")
        while c == p:
            c = free_port()
        sasl = None
        if sasl_users:
            sasl = free_port()
            while sasl in (p, c):
                sasl = free_port()
        return launch_kafka(Path(workdir), p, c, num_partitions, heap_mb, extra_config or {}, timeout, sasl, sasl_users)

    return start_with_retry(launch, auto)  # type: ignore[return-value]
