"""A local S3-compatible store (s3proxy with a filesystem blob store), and creating buckets on any S3 endpoint.

Flow step: none (development tooling). The s3proxy jars come from ``scripts/bootstrap.sh`` (``$DDAD_HOME/s3proxy``);
the server checks real request signatures and is ready once ListBuckets answers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.localstack.common import (
    LOOPBACK,
    S3PROXY_VERSION,
    Pending,
    ServerHandle,
    ddad_home,
    find_java,
    fresh_dir,
    java_cmd,
    pick_port,
    require_jars,
    spawn,
    start_with_retry,
)

S3_ACCESS_KEY = "ddad-local"
S3_SECRET_KEY = "ddad-local-secret"
S3_REGION = "us-east-1"


def s3proxy_libs() -> Path:
    """Directory with the s3proxy jars (``$DDAD_S3PROXY_LIBS`` overrides the cache)."""
    return Path(os.environ.get("DDAD_S3PROXY_LIBS") or ddad_home() / "s3proxy" / S3PROXY_VERSION / "libs")


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


_S3PROXY_LOGBACK = """\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


def launch_s3(workdir: Path, port: int, heap_mb: int, timeout: float) -> Pending:
    """Launch s3proxy on ``port`` without waiting for it (``start_s3`` waits and retries)."""
    java, libs = find_java(), s3proxy_libs()
    require_jars(libs, f"s3proxy {S3PROXY_VERSION}", "DDAD_S3PROXY_LIBS", "S3_ENDPOINT_URL")
    workdir = fresh_dir(workdir)
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
    cmd = java_cmd(
        java,
        libs,
        heap_mb,
        f"-Dlogback.configurationFile={workdir / 'logback.xml'}",
        "org.gaul.s3proxy.Main",
        "--properties",
        str(workdir / "s3proxy.conf"),
    )
    proc = spawn(cmd, workdir / "s3proxy.log", cwd=workdir)
    client_holder: list[Any] = []

    def probe() -> None:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            pass
        if not client_holder:  # building a boto3 client costs ~0.3 s: once per start, not per probe
            import boto3
            from botocore.config import Config

            client_holder.append(
                boto3.client("s3", config=Config(retries={"max_attempts": 1}), **handle.client_kwargs())
            )
        client_holder[0].list_buckets()

    handle = S3Handle(
        "s3",
        proc,
        workdir,
        [workdir / "s3proxy.log"],
        cmd=cmd,
        spawn_log=workdir / "s3proxy.log",
        probe=probe,
        start_timeout=timeout,
        endpoint_url=endpoint,
    )
    return Pending(handle, probe, timeout)


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
    return start_with_retry(lambda: launch_s3(Path(workdir), pick_port(port, "s3"), heap_mb, timeout), port is None)  # type: ignore[return-value]
