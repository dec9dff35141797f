"""A local Redis server (Debian's ``redis-server``), without persistence unless asked for.

Flow step: none (development tooling). Bound to loopback on a free port; ready once it answers PING.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from devtools.localstack.common import (
    LOOPBACK,
    Pending,
    ServerHandle,
    ServerNotAvailable,
    fresh_dir,
    pick_port,
    spawn,
    start_with_retry,
)


@dataclass
class RedisHandle(ServerHandle):
    """A Redis server without persistence."""

    url: str = ""
    #: ACL users created at start (name -> password), besides ``default`` (which needs ``password`` when set).
    users: dict[str, str] = field(default_factory=dict, repr=False)


def find_redis_server() -> str:
    """Path of ``redis-server`` (``$DDAD_REDIS_SERVER`` or PATH)."""
    found = os.environ.get("DDAD_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise ServerNotAvailable(
            "redis-server not found: run `bash scripts/bootstrap.sh` (installs Debian's redis-server), "
            "`apt-get install redis-server`, or set REDIS_URL to an existing server"
        )
    return found


def launch_redis(
    workdir: Path,
    port: int,
    timeout: float,
    persistent: bool = False,
    password: str | None = None,
    users: dict[str, str] | None = None,
) -> Pending:
    """Launch ``redis-server`` on ``port`` without waiting for it (``start_redis`` waits and retries)."""
    binary = find_redis_server()
    workdir = fresh_dir(workdir)
    log = workdir / "redis.log"
    # No persistence by default (tests and the demo want a clean, fast store); bound to loopback only. Persistent
    # (outage tests restart it): an append-only file synced on every write, so a restart keeps every acknowledged
    # write.
    # fmt: off
    cmd = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
           "--appendonly", "yes" if persistent else "no", "--appendfsync", "always",
           "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"]
    # fmt: on
    if password:
        cmd += ["--requirepass", password]
    for name, pw in (users or {}).items():  # ACL users: full access to every key and command
        cmd += ["--user", name, "on", f">{pw}", "~*", "&*", "+@all"]
    proc = spawn(cmd, workdir / "stdout.log", cwd=workdir)
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

    handle = RedisHandle(
        "redis",
        proc,
        workdir,
        [log, workdir / "stdout.log"],
        cmd=cmd,
        spawn_log=workdir / "stdout.log",
        probe=probe,
        start_timeout=timeout,
        url=url,
        users=dict(users or {}),
    )
    return Pending(handle, probe, timeout)


def start_redis(
    workdir: Path,
    port: int | None = None,
    timeout: float = 30.0,
    persistent: bool = False,
    password: str | None = None,
    users: dict[str, str] | None = None,
) -> RedisHandle:
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
    return start_with_retry(
        lambda: launch_redis(Path(workdir), pick_port(port, "redis"), timeout, persistent, password, users),
        port is None,
    )  # type: ignore[return-value]
