"""Real local servers for the tests and the demo: Apache Kafka (KRaft), Redis and an S3-compatible store (s3proxy).

Flow step: none of the camera -> Kafka -> worker -> Redis/S3 -> alerts stages; this is the plumbing underneath them when
no real cluster is configured. ``scripts/bootstrap.sh`` fetches the binaries into a user cache dir
(``$DDAD_HOME``, default ``~/.cache/ddad-inspection``); this module finds them there and runs each server as a
subprocess on free loopback ports, waits until it really answers (a Kafka metadata request, a Redis PING, an S3
ListBuckets), and stops it again (SIGTERM, then SIGKILL). Logs stay in the given work dir and their tail is part of
every start-up error.

Example:
    >>> with LocalStack(Path("/tmp/stack")) as stack:       # doctest: +SKIP
    ...     print(stack.env()["KAFKA_BOOTSTRAP_SERVERS"])
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The single source of truth for the pinned versions: scripts/bootstrap.sh reads these four lines with sed, so keep
# the `NAME = "value"` shape.
KAFKA_VERSION = "4.1.1"
S3PROXY_VERSION = "4.1.0"
HELM_VERSION = "v3.22.0"
KUBECONFORM_VERSION = "v0.8.0"

LOOPBACK = "127.0.0.1"
S3_ACCESS_KEY = "ddad-local"
S3_SECRET_KEY = "ddad-local-secret"
S3_REGION = "us-east-1"


class ServerNotAvailable(RuntimeError):
    """A prerequisite (binary, jar cache, port) is missing, so the server cannot even be launched."""


class ServerStartError(RuntimeError):
    """The server was launched but exited or never answered; the message carries its log tail."""

    def __init__(self, message: str, port_clash: bool = False) -> None:
        super().__init__(message)
        self.port_clash = port_clash


# --------------------------------------------------------------------------------------------------------------------
# Locating binaries (same cache layout as scripts/bootstrap.sh)
# --------------------------------------------------------------------------------------------------------------------


def ddad_home() -> Path:
    """The user cache dir shared by bootstrap.sh and this module (``$DDAD_HOME`` or ``~/.cache/ddad-inspection``)."""
    return Path(os.environ.get("DDAD_HOME") or Path.home() / ".cache" / "ddad-inspection")


def kafka_libs() -> Path:
    """Directory with the Kafka broker jars (``$DDAD_KAFKA_LIBS`` overrides the cache)."""
    return Path(os.environ.get("DDAD_KAFKA_LIBS") or ddad_home() / "kafka" / KAFKA_VERSION / "libs")


def s3proxy_libs() -> Path:
    """Directory with the s3proxy jars (``$DDAD_S3PROXY_LIBS`` overrides the cache)."""
    return Path(os.environ.get("DDAD_S3PROXY_LIBS") or ddad_home() / "s3proxy" / S3PROXY_VERSION / "libs")


def find_go_tool(name: str) -> Path | None:
    """Find ``helm`` or ``kubeconform``: ``$DDAD_<NAME>``, then the bootstrap's GOBIN, then ``PATH``.

    Args:
        name: binary name, e.g. ``"helm"``.

    Returns:
        The executable's path, or None when it is nowhere.
    """
    override = os.environ.get(f"DDAD_{name.upper()}")
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    cached = ddad_home() / "go" / "bin" / name
    if os.access(cached, os.X_OK):
        return cached
    found = shutil.which(name)
    return Path(found) if found else None


def find_java() -> str:
    """Path of a ``java`` (17+) executable: ``$JAVA_HOME/bin/java`` or ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ServerNotAvailable(
            "java not found: install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless) or set "
            "JAVA_HOME, or point KAFKA_BOOTSTRAP_SERVERS / S3_ENDPOINT_URL at existing servers"
        )
    return found


def _require_jars(libs: Path, what: str, env_var: str, server_env: str) -> None:
    if not any(libs.glob("*.jar")):
        raise ServerNotAvailable(
            f"{what} jars missing in {libs}: run `bash scripts/bootstrap.sh` (fetches them from Maven Central), "
            f"set {env_var} to a folder of jars, or set {server_env} to an existing server"
        )


# --------------------------------------------------------------------------------------------------------------------
# Ports and processes
# --------------------------------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it; a tiny race with other processes remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(port: int | None, what: str) -> int:
    if port is None:
        return free_port()
    if not port_is_free(port):
        raise ServerNotAvailable(
            f"port {port} on {LOOPBACK} is taken ({what}): stop what listens there or pass another port"
        )
    return port


# Resolved once in the parent: the child between fork and exec should do as little as possible (no dlopen there,
# whose loader lock another thread of the parent may have held at fork time).
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. PR_SET_PDEATHSIG makes the kernel send SIGTERM to the server when the
    # thread that started it goes away, so a crashed or killed test run leaves no orphaned brokers behind.
    # Caveat: that is the starting *thread*; start servers from the main thread (pytest fixtures and the demo do).
    _PRCTL(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


def _spawn(cmd: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: stop() signals the whole group, and a Ctrl-C in the terminal does not hit the
            # servers before the test session had a chance to stop them in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerHandle:
    """A running local server: its process, work dir and log files.

    Attributes:
        name: ``"kafka"``, ``"redis"`` or ``"s3"``.
        process: the server process (leader of its own process group).
        workdir: where its config, data and logs live.
        log_paths: log files, most useful first.
    """

    name: str
    process: subprocess.Popen
    workdir: Path
    log_paths: list[Path]
    # How to launch the same server again on the same ports and data (``restart``): command, its output log, and the
    # readiness probe with its timeout. Set by the launchers.
    cmd: list[str] = field(default_factory=list, repr=False)
    spawn_log: Path | None = field(default=None, repr=False)
    probe: Callable[[], None] | None = field(default=None, repr=False)
    start_timeout: float = field(default=60.0, repr=False)

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each log file, with their paths."""
        return "\n".join(f"--- {p} (last {lines} lines) ---\n{_tail(p, lines)}" for p in self.log_paths)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout`` seconds. Idempotent."""
        if self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored %s for %.0fs", self.name, self.process.pid, sig.name, wait_s)

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a crash, for fault tests) and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self, timeout: float | None = None) -> ServerHandle:
        """Start the stopped (or still running: stopped first) server again on the same ports, keeping its data.

        For outage tests: clients that were connected see the server go away and come back at the same address.

        Raises:
            ServerStartError: it did not answer again within ``timeout`` (default: its start-up timeout).
        """
        if not self.cmd or self.spawn_log is None or self.probe is None:
            raise ServerNotAvailable(f"{self.name} was not started by this module: it cannot be restarted")
        self.stop()
        self.process = _spawn(self.cmd, self.spawn_log, cwd=self.workdir)
        _Pending(self, self.probe, timeout or self.start_timeout).wait()
        return self

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung server, for fault tests)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        os.killpg(self.process.pid, signal.SIGCONT)


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


@dataclass
class RedisHandle(ServerHandle):
    """A Redis server without persistence."""

    url: str = ""
    #: ACL users created at start (name -> password), besides ``default`` (which needs ``password`` when set).
    users: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class S3Handle(ServerHandle):
    """An s3proxy server with a filesystem blob store under its work dir."""

    endpoint_url: str = ""
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", **self.client_kwargs())

    def create_bucket(self, name: str) -> None:
        """Create ``name`` unless it exists already."""
        create_bucket(self.client_kwargs(), name)


def create_bucket(client_kwargs: dict[str, str], name: str) -> None:
    """Create bucket ``name`` on any S3 endpoint (local or real) unless it exists already.

    Args:
        client_kwargs: keyword arguments for ``boto3.client("s3", ...)``.
        name: bucket name (3-63 lowercase characters).
    """
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", **client_kwargs)
    region = client_kwargs.get("region_name") or S3_REGION
    # AWS rejects an explicit LocationConstraint for us-east-1 and requires one everywhere else.
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        client.create_bucket(Bucket=name, **extra)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


@dataclass
class _Pending:
    """A launched server that is not known to be ready yet."""

    handle: ServerHandle
    probe: Callable[[], None]
    timeout: float
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def wait(self) -> ServerHandle:
        """Probe until the server answers; on exit or timeout stop it and raise ServerStartError with its logs."""
        handle, start, last_error = self.handle, time.monotonic(), None
        try:
            while time.monotonic() - start < self.timeout:
                if not handle.running:
                    raise self._error(f"exited with code {handle.process.returncode} during start-up")
                try:
                    self.probe()
                    logger.info("%s ready after %.1fs", handle.name, time.monotonic() - start)
                    return handle
                except (TypeError, AttributeError, ImportError, NameError):
                    raise  # a bug in the probe itself: waiting would only burn the whole timeout
                except Exception as exc:  # noqa: BLE001 - any other failure of the probe means "not ready yet"
                    if "ConfigurationError" in type(exc).__name__:
                        raise
                    last_error = exc
                time.sleep(0.2)
            raise self._error(f"did not answer within {self.timeout:.0f}s (last probe error: {last_error!r})")
        except BaseException:
            handle.stop()
            raise
        finally:
            for fn in self.cleanup:
                fn()

    def _error(self, what: str) -> ServerStartError:
        tail = self.handle.log_tail()
        clash = "Address already in use" in tail or "BindException" in tail
        return ServerStartError(f"{self.handle.name} {what}; logs in {self.handle.workdir}\n{tail}", port_clash=clash)


def _start_with_retry(launch: Callable[[], _Pending], auto_ports: bool, attempts: int = 3) -> ServerHandle:
    # free_port() cannot reserve a port, so another process may grab it before the server binds: with ports we chose
    # ourselves, try again on fresh ones.
    for attempt in range(attempts):
        try:
            return launch().wait()
        except ServerStartError as exc:
            if not (auto_ports and exc.port_clash and attempt < attempts - 1):
                raise
            logger.warning("port clash while starting a server, retrying on other ports")
    raise AssertionError("unreachable")


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------------------------------

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
        raise ServerNotAvailable("keytool (part of the JDK) not found next to java nor on PATH: needed for the "
                                 "TLS listener of the local Kafka")
    store = workdir / "broker.p12"
    for args in (["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "7",
                  "-dname", "CN=localhost", "-ext", f"SAN=ip:{LOOPBACK},dns:localhost"],
                 ["-exportcert", "-rfc", "-alias", "broker", "-file", str(workdir / "ca.pem")]):
        done = subprocess.run([keytool, *args, "-keystore", str(store), "-storetype", "PKCS12",
                               "-storepass", _KEYSTORE_PASSWORD, "-keypass", _KEYSTORE_PASSWORD, "-noprompt"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ServerStartError(f"keytool {args[0]} failed (exit {done.returncode}): {done.stdout}{done.stderr}")
    return workdir / "ca.pem"


def _sasl_ssl_properties(sasl_port: int, keystore: Path) -> dict[str, Any]:
    """A second client listener, SASL_SSL with SCRAM-SHA-512 (users are added when the storage is formatted)."""
    return {
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": _KEYSTORE_PASSWORD,
        "ssl.key.password": _KEYSTORE_PASSWORD,
        "ssl.client.auth": "none",
    }


def _kafka_properties(workdir: Path, port: int, controller_port: int, num_partitions: int, extra: dict,
                      sasl_port: int | None = None) -> str:
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


def _java_cmd(java: str, libs: Path, heap_mb: int, *args: str) -> list[str]:
    # Serial GC and a small heap: two cores and a few hundred MB are plenty for a local broker, and the default G1 with
    # a quarter of RAM makes every JVM start slower. C1 only (TieredStopAtLevel=1): measured on 2 cores, Kafka answers
    # after ~2.5 s instead of ~6 s because C2 stops competing for the cores during start-up; the peak throughput it
    # costs does not matter on loopback. $DDAD_JAVA_OPTS adds or overrides options (the last occurrence wins), e.g.
    # DDAD_JAVA_OPTS=-XX:TieredStopAtLevel=4 for a long benchmark.
    return [java, f"-Xms{min(heap_mb, 128)}m", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            *os.environ.get("DDAD_JAVA_OPTS", "").split(), "-cp", str(libs / "*"), *args]


def _launch_kafka(workdir: Path, port: int, controller_port: int, num_partitions: int, heap_mb: int,
                  extra_config: dict, timeout: float, sasl_port: int | None = None,
                  sasl_users: dict[str, str] | None = None) -> _Pending:
    java, libs = find_java(), kafka_libs()
    _require_jars(libs, f"Kafka {KAFKA_VERSION}", "DDAD_KAFKA_LIBS", "KAFKA_BOOTSTRAP_SERVERS")
    workdir = _fresh_dir(workdir)
    ca_file = str(_make_keystore(workdir, java)) if sasl_port else ""
    (workdir / "server.properties").write_text(
        _kafka_properties(workdir, port, controller_port, num_partitions, extra_config, sasl_port))
    (workdir / "log4j2.properties").write_text(_KAFKA_LOG4J2.format(log=workdir / "server.log"))
    log4j = f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}"

    # KRaft needs its metadata dir formatted with a cluster id before the first start; SCRAM users are written into
    # the metadata log by the same step.
    scram = [a for name, pw in (sasl_users or {}).items()
             for a in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={pw}]")]
    fmt = subprocess.run(
        _java_cmd(java, libs, 256, log4j, "kafka.tools.StorageTool", "format", "-t", _kafka_cluster_id(),
                  "-c", str(workdir / "server.properties"), *scram),
        cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    (workdir / "format.log").write_text(fmt.stdout + fmt.stderr)
    if fmt.returncode != 0:
        raise ServerStartError(f"kafka storage format failed (exit {fmt.returncode}); logs in {workdir}\n"
                               f"{fmt.stdout}{fmt.stderr}")

    cmd = _java_cmd(java, libs, heap_mb, log4j, "kafka.Kafka", str(workdir / "server.properties"))
    proc = _spawn(cmd, workdir / "stdout.log", cwd=workdir)
    bootstrap = f"{LOOPBACK}:{port}"
    handle = KafkaHandle("kafka", proc, workdir, [workdir / "server.log", workdir / "stdout.log"],
                         cmd=cmd, spawn_log=workdir / "stdout.log", probe=lambda: _probe_kafka(bootstrap, port),
                         start_timeout=timeout, bootstrap_servers=bootstrap, controller_port=controller_port,
                         sasl_ssl_bootstrap=f"{LOOPBACK}:{sasl_port}" if sasl_port else "", ca_file=ca_file,
                         sasl_users=dict(sasl_users or {}))
    return _Pending(handle, handle.probe, timeout)


def _probe_kafka(bootstrap: str, port: int) -> None:
    # A cheap TCP check first: kafka-python's client would otherwise spend its whole api-version timeout (and log
    # warnings) on a port that is not even open yet.
    with socket.create_connection((LOOPBACK, port), timeout=1):
        pass
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000,
                             client_id="ddad-localstack-probe")
    try:
        cluster = admin.describe_cluster()
        if not cluster.get("brokers"):
            raise RuntimeError("metadata lists no broker yet")
    finally:
        admin.close()


def start_kafka(workdir: Path, port: int | None = None, controller_port: int | None = None, num_partitions: int = 1,
                heap_mb: int = 512, extra_config: dict | None = None, timeout: float = 90.0,
                sasl_users: dict[str, str] | None = None) -> KafkaHandle:
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

    def launch() -> _Pending:
        p = _pick_port(port, "kafka client port")
        c = _pick_port(controller_port, "kafka controller port")
        while c == p:
            c = free_port()
        sasl = None
        if sasl_users:
            sasl = free_port()
            while sasl in (p, c):
                sasl = free_port()
        return _launch_kafka(Path(workdir), p, c, num_partitions, heap_mb, extra_config or {}, timeout, sasl,
                             sasl_users)

    return _start_with_retry(launch, auto)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------------------------


def find_redis_server() -> str:
    """Path of ``redis-server`` (``$DDAD_REDIS_SERVER`` or PATH)."""
    found = os.environ.get("DDAD_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise ServerNotAvailable(
            "redis-server not found: run `bash scripts/bootstrap.sh` (installs Debian's redis-server), "
            "`apt-get install redis-server`, or set REDIS_URL to an existing server"
        )
    return found


def _launch_redis(workdir: Path, port: int, timeout: float, persistent: bool = False, password: str | None = None,
                  users: dict[str, str] | None = None) -> _Pending:
    binary = find_redis_server()
    workdir = _fresh_dir(workdir)
    log = workdir / "redis.log"
    # No persistence by default (tests and the demo want a clean, fast store); bound to loopback only. Persistent
    # (outage tests restart it): an append-only file synced on every write, so a restart keeps every acknowledged
    # write.
    cmd = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
           "--appendonly", "yes" if persistent else "no", "--appendfsync", "always",
           "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"]
    if password:
        cmd += ["--requirepass", password]
    for name, pw in (users or {}).items():  # ACL users: full access to every key and command
        cmd += ["--user", name, "on", f">{pw}", "~*", "&*", "+@all"]
    proc = _spawn(cmd, workdir / "stdout.log", cwd=workdir)
    url = f"redis://{LOOPBACK}:{port}/0"
    auth_url = f"redis://:{password}@{LOOPBACK}:{port}/0" if password else url

    def probe() -> None:
        import redis

        client = redis.Redis.from_url(auth_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
        finally:
            client.close()

    handle = RedisHandle("redis", proc, workdir, [log, workdir / "stdout.log"], cmd=cmd,
                         spawn_log=workdir / "stdout.log", probe=probe, start_timeout=timeout, url=url,
                         users=dict(users or {}))
    return _Pending(handle, probe, timeout)


def start_redis(workdir: Path, port: int | None = None, timeout: float = 30.0, persistent: bool = False,
                password: str | None = None, users: dict[str, str] | None = None) -> RedisHandle:
    """Start ``redis-server`` on loopback.

    Args:
        workdir: fresh dir for its log (wiped if it exists).
        port: a free one when None.
        timeout: seconds to wait for PING.
        persistent: keep data across ``restart()`` (append-only file, fsync on every write).
        password: ``requirepass`` of the ``default`` user (AUTH); ``handle.url`` stays without it.
        users: ACL users (name -> password) with access to all keys and commands.

    Returns:
        The handle; ``handle.url`` is ``"redis://127.0.0.1:<port>/0"``.

    Raises:
        ServerNotAvailable: redis-server missing or the given port taken.
        ServerStartError: it exited or did not answer PING.
    """
    return _start_with_retry(lambda: _launch_redis(Path(workdir), _pick_port(port, "redis"), timeout, persistent,
                                                   password, users), port is None)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# S3 (s3proxy)
# --------------------------------------------------------------------------------------------------------------------

_S3PROXY_LOGBACK = """\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


def _launch_s3(workdir: Path, port: int, heap_mb: int, timeout: float) -> _Pending:
    java, libs = find_java(), s3proxy_libs()
    _require_jars(libs, f"s3proxy {S3PROXY_VERSION}", "DDAD_S3PROXY_LIBS", "S3_ENDPOINT_URL")
    workdir = _fresh_dir(workdir)
    (workdir / "blobs").mkdir()
    endpoint = f"http://{LOOPBACK}:{port}"
    (workdir / "s3proxy.conf").write_text(
        f"s3proxy.endpoint={endpoint}\n"
        # Real signature checks (v2 and v4), so a client with wrong credentials fails here as it would on AWS.
        "s3proxy.authorization=aws-v2-or-v4\n"
        f"s3proxy.identity={S3_ACCESS_KEY}\n"
        f"s3proxy.credential={S3_SECRET_KEY}\n"
        "jclouds.provider=filesystem\n"
        f"jclouds.filesystem.basedir={workdir / 'blobs'}\n"
    )
    # Without our logback config s3proxy logs every Jetty selector event at DEBUG.
    (workdir / "logback.xml").write_text(_S3PROXY_LOGBACK)
    cmd = _java_cmd(java, libs, heap_mb, f"-Dlogback.configurationFile={workdir / 'logback.xml'}",
                    "org.gaul.s3proxy.Main", "--properties", str(workdir / "s3proxy.conf"))
    proc = _spawn(cmd, workdir / "s3proxy.log", cwd=workdir)
    client_holder: list[Any] = []

    def probe() -> None:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            pass
        if not client_holder:  # building a boto3 client costs ~0.3 s: once per start, not per probe
            import boto3
            from botocore.config import Config

            client_holder.append(boto3.client("s3", config=Config(retries={"max_attempts": 1}),
                                              **handle.client_kwargs()))
        client_holder[0].list_buckets()

    handle = S3Handle("s3", proc, workdir, [workdir / "s3proxy.log"], cmd=cmd, spawn_log=workdir / "s3proxy.log",
                      probe=probe, start_timeout=timeout, endpoint_url=endpoint)
    return _Pending(handle, probe, timeout)


def start_s3(workdir: Path, port: int | None = None, heap_mb: int = 256, timeout: float = 60.0) -> S3Handle:
    """Start s3proxy (filesystem blob store under ``workdir/blobs``) on loopback.

    Args:
        workdir: fresh dir for config, blobs and log (wiped if it exists).
        port: a free one when None.
        heap_mb: JVM max heap.
        timeout: seconds to wait for ListBuckets to answer.

    Returns:
        The handle; see ``client_kwargs()`` and ``create_bucket()``.

    Raises:
        ServerNotAvailable: java or the jars missing, or the given port taken.
        ServerStartError: it exited or did not answer.
    """
    return _start_with_retry(lambda: _launch_s3(Path(workdir), _pick_port(port, "s3"), heap_mb, timeout),
                             port is None)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# All three
# --------------------------------------------------------------------------------------------------------------------


class LocalStack:
    """Context manager running Kafka, Redis and S3 locally; stops them all on exit (also after errors).

    The three are launched first and waited on afterwards, so their JVM start-ups overlap.

    Args:
        workdir: parent dir; each server gets a subfolder.
        kafka, redis, s3: which servers to run.
        num_partitions: partitions of auto-created Kafka topics.
        buckets: S3 buckets to create once the store is up.
    """

    def __init__(self, workdir: Path, kafka: bool = True, redis: bool = True, s3: bool = True,
                 num_partitions: int = 1, buckets: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self._want = {"kafka": kafka, "redis": redis, "s3": s3}
        self.num_partitions = num_partitions
        self.buckets = buckets
        self.kafka: KafkaHandle | None = None
        self.redis: RedisHandle | None = None
        self.s3: S3Handle | None = None

    def start(self) -> LocalStack:
        """Launch and wait for the selected servers; on any failure stop what already runs and re-raise."""
        launchers: dict[str, Callable[[], _Pending]] = {
            "kafka": lambda: _launch_kafka(self.workdir / "kafka", free_port(), free_port(), self.num_partitions,
                                           512, {}, 90.0),
            "redis": lambda: _launch_redis(self.workdir / "redis", free_port(), 30.0),
            "s3": lambda: _launch_s3(self.workdir / "s3", free_port(), 256, 60.0),
        }
        restart = {
            "kafka": lambda: start_kafka(self.workdir / "kafka", num_partitions=self.num_partitions),
            "redis": lambda: start_redis(self.workdir / "redis"),
            "s3": lambda: start_s3(self.workdir / "s3"),
        }
        pending: dict[str, _Pending] = {}
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
            env.update(S3_ENDPOINT_URL=self.s3.endpoint_url, AWS_ACCESS_KEY_ID=self.s3.access_key,
                       AWS_SECRET_ACCESS_KEY=self.s3.secret_key, AWS_REGION=self.s3.region)
        return env

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
