"""What the three local servers share: the pinned versions, finding binaries, free ports, and the processes.

Flow step: none (development tooling). ``kafka.py``, ``redis.py`` and ``s3.py`` launch one server each through
``spawn``, wait on it with ``Pending`` (a readiness probe, the log tail in every error) and retry a lost port race with
``start_with_retry``; ``ServerHandle`` stops, kills, pauses, resumes and restarts what they started.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# The single source of truth for the pinned versions: scripts/bootstrap.sh reads these four lines with sed, so keep
# the `NAME = "value"` shape.
KAFKA_VERSION = "4.1.1"
S3PROXY_VERSION = "4.1.0"
HELM_VERSION = "v3.22.0"
KUBECONFORM_VERSION = "v0.8.0"

LOOPBACK = "127.0.0.1"


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


def require_jars(libs: Path, what: str, env_var: str, server_env: str) -> None:
    """Raise ``ServerNotAvailable`` naming the fixes when ``libs`` holds no jar."""
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


def pick_port(port: int | None, what: str) -> int:
    """``port`` if it is free (``ServerNotAvailable`` naming ``what`` if not), a free one when None."""
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


def spawn(cmd: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server process in its own process group, output appended to ``log_path``; it dies with us."""
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
        self.process = spawn(self.cmd, self.spawn_log, cwd=self.workdir)
        Pending(self, self.probe, timeout or self.start_timeout).wait()
        return self

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung server, for fault tests)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        os.killpg(self.process.pid, signal.SIGCONT)


@dataclass
class Pending:
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


def start_with_retry(launch: Callable[[], Pending], auto_ports: bool, attempts: int = 3) -> ServerHandle:
    """Launch and wait; with ``auto_ports``, launch again on fresh ports after a port clash."""
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


def fresh_dir(path: Path) -> Path:
    """``path`` as a new, empty directory (whatever was there is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def java_cmd(java: str, libs: Path, heap_mb: int, *args: str) -> list[str]:
    """The ``java`` command line of a local JVM server: small heap, serial GC, C1, the jars of ``libs``."""
    # Serial GC and a small heap: two cores and a few hundred MB are plenty for a local broker, and the default G1 with
    # a quarter of RAM makes every JVM start slower. C1 only (TieredStopAtLevel=1): measured on 2 cores, Kafka answers
    # after ~2.5 s instead of ~6 s because C2 stops competing for the cores during start-up; the peak throughput it
    # costs does not matter on loopback. $DDAD_JAVA_OPTS adds or overrides options (the last occurrence wins), e.g.
    # DDAD_JAVA_OPTS=-XX:TieredStopAtLevel=4 for a long benchmark.
    return [
        java,
        f"-Xms{min(heap_mb, 128)}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        *os.environ.get("DDAD_JAVA_OPTS", "").split(),
        "-cp",
        str(libs / "*"),
        *args,
    ]
