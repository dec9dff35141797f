"""Shared fixtures: real Kafka, Redis and S3 servers for any test that asks for them, and the ``gpu`` auto-skip.

The servers come from ``devtools.localstack`` (started lazily, once per session, on free loopback ports; logs under
pytest's basetemp, which pytest keeps for the last runs). Environment variables point the same tests at existing
servers instead: ``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``S3_ENDPOINT_URL`` (with ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``). When a test that uses a local server fails, its report gets a section with
the tail of each server log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import localstack

_SERVER_FIXTURES = ("kafka_bootstrap_servers", "redis_url", "s3_client_kwargs")
_started: list[localstack.ServerHandle] = []


@pytest.fixture(scope="session")
def _servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers", numbered=False)


@contextlib.contextmanager
def _serving(handle: localstack.ServerHandle) -> Iterator[localstack.ServerHandle]:
    _started.append(handle)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(_servers_dir: Path) -> Iterator[str]:
    """``host:port`` of a Kafka broker: ``$KAFKA_BOOTSTRAP_SERVERS`` or a local single-node KRaft broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with _serving(localstack.start_kafka(_servers_dir / "kafka")) as handle:
        yield handle.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url(_servers_dir: Path) -> Iterator[str]:
    """``redis://`` URL: ``$REDIS_URL`` or a local redis-server without persistence."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with _serving(localstack.start_redis(_servers_dir / "redis")) as handle:
        yield handle.url


@pytest.fixture(scope="session")
def s3_client_kwargs(_servers_dir: Path) -> Iterator[dict[str, str]]:
    """Keyword arguments for ``boto3.client("s3", **kw)``: ``$S3_ENDPOINT_URL`` (+ AWS_*) or a local s3proxy."""
    if os.environ.get("S3_ENDPOINT_URL"):
        yield {
            "endpoint_url": os.environ["S3_ENDPOINT_URL"],
            "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "region_name": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        }
        return
    with _serving(localstack.start_s3(_servers_dir / "s3")) as handle:
        yield handle.client_kwargs()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    # A failure next to a real server is often the server's doing: show its log right in the failure report.
    if report.failed and _started and any(name in getattr(item, "fixturenames", ()) for name in _SERVER_FIXTURES):
        report.sections.append(("local server logs", "\n".join(h.log_tail(25) for h in _started)))
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch  # only now: importing torch costs seconds, and most runs select no gpu test

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU visible on this machine")
    for item in gpu_items:
        item.add_marker(skip)
