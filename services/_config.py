"""Settings and start-up plumbing shared by the services: common fields, strict env parsing, ``--print-config``,
``--check`` and the one-line start-up errors.

Flow step: none (start-up). Each service has one ``pydantic_settings.BaseSettings`` subclass in its ``config.py``
with ``env_prefix`` ``<SERVICE>_``; services read settings only from the environment (no YAML merging, no exec).
A bad value, and also an unknown ``<SERVICE>_*`` variable (a typo would otherwise be ignored silently), stops the
service at start with the variable named and exit status 2.

Start-up steps (connect to Kafka, Redis, the object store; load the bundle; open the source) run through
``StartupChecks``: a failure the user can fix raises ``StartupError``, which ``run_main`` prints as one line naming
the dependency and the setting, and exits with status 2. ``--check`` runs every step, prints one ``ok`` / ``FAILED``
line per dependency, and exits 0 only when all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, Literal, TextIO, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXIT_BAD_CONFIG = 2  # a setting, or the dependency it points at, is wrong: one line on stderr


class StartupError(RuntimeError):
    """A start-up failure the user can fix (bundle, server address, credentials, source, port): one line, exit 2."""


class CommonSettings(BaseSettings):
    """Fields every service has (``<PREFIX>KAFKA_BOOTSTRAP_SERVERS`` etc.)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    kafka_bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(None, description="PEM file of the CA that signed the brokers' certificates "
                                                           "(SSL / SASL_SSL; default: the system's trust store).")
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: str | None = Field(None, description="Private key (PEM) of the client certificate.")
    kafka_ssl_check_hostname: bool = Field(True, description="Verify that the broker certificate names the host.")
    kafka_client_id: str | None = Field(None, description="Defaults to the service name plus the host name.")
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", description="Per-environment topic prefix.")
    redis_url: str = Field("redis://localhost:6379/0",
                           description="redis:// or rediss:// URL; credentials in it or in redis_username/password.")
    redis_username: str | None = Field(None, description="Redis ACL user (default: the URL's, else 'default').")
    redis_password: SecretStr | None = Field(None, description="Redis AUTH password (e.g. from a Kubernetes secret); "
                                                               "overrides one in the URL.")
    redis_key_prefix: str = ""
    object_store_url: str = Field("file:///var/lib/inspection/objects",
                                  description="file:///dir for the local store or s3://bucket/prefix for S3.")
    s3_endpoint_url: str | None = Field(None, description="For MinIO or another S3-compatible server.")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    http_port: int = Field(8080, ge=-1, le=65535, description="Health/metrics port; 0 = any free port, -1 = off.")
    connect_timeout_s: float = Field(10.0, gt=0, le=300,
                                     description="Longest wait for Kafka, Redis or the object store to answer at "
                                                 "start-up (and for each later connection attempt).")
    memory_snapshot_dir: str | None = Field(
        None, description="Debugging memory growth: trace Python allocations and write a tracemalloc snapshot here "
        "every memory_snapshot_interval_s (slows the service; services/_memory.py).")
    memory_snapshot_interval_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _sasl(self) -> CommonSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (self.kafka_sasl_mechanism and
                                                                    self.kafka_sasl_username):
            raise ValueError("SASL security protocols need kafka_sasl_mechanism and kafka_sasl_username")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file {path!r}")
        return self

    @model_validator(mode="after")
    def _redis_credentials(self) -> CommonSettings:
        # Credentials given apart from the URL (a secret mounted as REDIS_PASSWORD) go into it once, here, so every
        # client of every service (redis.Redis.from_url) authenticates the same way; the URL is masked wherever it
        # is shown (masked_config, start-up lines).
        if self.redis_username is None and self.redis_password is None:
            return self
        parsed = urlsplit(self.redis_url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url: scheme {parsed.scheme!r} (use redis://, rediss:// or unix://)")
        user = self.redis_username if self.redis_username is not None else unquote(parsed.username or "")
        password = (self.redis_password.get_secret_value() if self.redis_password is not None
                    else unquote(parsed.password or ""))
        host = parsed.netloc.rsplit("@", 1)[-1]
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        self.redis_url = urlunsplit(parsed._replace(netloc=f"{auth}@{host}" if auth else host))
        return self

    def kafka_kwargs(self, service: str) -> dict[str, Any]:
        """Connection kwargs for kafka-python clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()],
            "security_protocol": self.kafka_security_protocol,
            "client_id": self.kafka_client_id or f"{service}-{os.uname().nodename}",
            # kafka-python blocks in every client's constructor until the cluster answers (30 s by default).
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            kwargs.update(ssl_cafile=self.kafka_ssl_cafile, ssl_certfile=self.kafka_ssl_certfile,
                          ssl_keyfile=self.kafka_ssl_keyfile, ssl_check_hostname=self.kafka_ssl_check_hostname)
        if self.kafka_sasl_mechanism:
            kwargs.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password.get_secret_value()
                          if self.kafka_sasl_password else None)
        return kwargs

    def s3_client_kwargs(self) -> dict[str, Any]:
        """kwargs for ``boto3.client("s3", ...)``; empty credentials fall back to boto's own chain (IRSA, env)."""
        kwargs: dict[str, Any] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.s3_access_key_id:
            kwargs["aws_access_key_id"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            kwargs["aws_secret_access_key"] = self.s3_secret_access_key.get_secret_value()
        return kwargs


S = TypeVar("S", bound=BaseSettings)

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]+)@", re.I)


def mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by asterisks (for logs and error lines)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:**********@", url)


def masked_config(settings: BaseSettings) -> dict[str, Any]:
    """Resolved settings as JSON-able values with secrets (SecretStr fields, URL passwords) masked."""
    out = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(getattr(settings, name), SecretStr):
            value = "**********"
        elif isinstance(value, str):
            value = mask_url(value)
        out[name] = value
    return out


def _unknown_env(settings_cls: type[BaseSettings]) -> list[str]:
    prefix = (settings_cls.model_config.get("env_prefix") or "").upper()
    if not prefix:
        return []
    known = {f"{prefix}{name}".upper() for name in settings_cls.model_fields}
    return sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (plus explicit overrides, used by tests and the demo).

    Raises:
        ValueError: naming every bad or unknown variable.
    """
    prefix = (settings_cls.model_config.get("env_prefix") or "").upper()
    unknown = _unknown_env(settings_cls)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(prefix + n.upper() for n in settings_cls.model_fields)}")
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            name = f"{prefix}{field.upper()}" if field else settings_cls.__name__
            problems.append(f"{name}: {err['msg']}{_shown_input(settings_cls, field, err)}" if field
                            else f"{name}: {err['msg']}")
        raise ValueError("invalid setting(s): " + "; ".join(problems)) from None


_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "sasl", "url")


def _shown_input(settings_cls: type, field: str, err: dict) -> str:
    """`` (got 'value')`` for a bad value, unless it could hold a secret: a missing field's "input" is every other
    value given (secrets included), and secret-typed or secret-named fields (passwords, tokens, URLs with
    credentials) are never echoed."""
    if err.get("type") == "missing" or "input" not in err or isinstance(err["input"], dict):
        return ""
    info = settings_cls.model_fields.get(field.split(".")[0])
    annotation = str(getattr(info, "annotation", ""))
    if "Secret" in annotation or any(word in field.lower() for word in _SECRET_WORDS):
        return " (value not shown: it may be a secret)"
    return f" (got {err['input']!r})"


T = TypeVar("T")


class StartupChecks:
    """Runs a service's start-up steps; each connects to (or loads) one dependency and names it.

    A step returns ``(value, detail)`` or raises ``StartupError``. Normally the first failure stops the start-up
    with one line: ``<dependency>: <what went wrong>; check <PREFIX>_<SETTING> (now <value>)``. With ``report``
    (``--check``) every step runs and prints one line on stdout, ``ok`` with the detail or ``FAILED`` with the
    reason, and ``finish()`` raises when any failed.

    Example:
        >>> import io; out = io.StringIO()
        >>> checks = StartupChecks("demo", CommonSettings(), report=True, out=out)
        >>> checks.run("redis", "redis_url", lambda: (None, "PONG"))
        >>> print(out.getvalue().strip())
        demo check: redis        ok      PONG
    """

    def __init__(self, service: str, settings: BaseSettings, report: bool = False, out: TextIO | None = None) -> None:
        self.service = service
        self.settings = settings
        self.report = report
        self.out = out
        self.passed: list[str] = []
        self.failed: list[str] = []

    def _setting(self, name: str) -> str:
        prefix = (self.settings.model_config.get("env_prefix") or "").upper()
        value = masked_config(self.settings).get(name)
        is_default = name not in self.settings.model_fields_set
        return f"{prefix}{name.upper()} ({'default ' if is_default else 'now '}{value})"

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def run(self, name: str, setting: str, step: Callable[[], tuple[T, str]]) -> T | None:
        """Run one step; ``setting`` is the field that points at the dependency (named in a failure)."""
        try:
            value, detail = step()
        except StartupError as exc:
            if not self.report:
                raise StartupError(f"{name}: {exc}; check {self._setting(setting)}") from None
            self.failed.append(name)
            self._print(f"{self.service} check: {name:<12} FAILED  {exc}; check {self._setting(setting)}")
            return None
        self.passed.append(name)
        if self.report:
            self._print(f"{self.service} check: {name:<12} ok      {detail}")
        return value

    def finish(self) -> None:
        """Raise ``StartupError`` if any step failed (only reachable with ``report``)."""
        if self.failed:
            total = len(self.failed) + len(self.passed)
            raise StartupError(f"{len(self.failed)} of {total} start-up checks failed: {', '.join(self.failed)}")


def run_main(settings_cls: type[S], run: Callable[[S, bool], int], argv: list[str] | None, description: str,
             service: str) -> int:
    """The shared ``main()`` of a service: parse flags, load settings, then ``run(settings, check_only)``.

    ``--print-config`` prints the resolved settings (secrets masked) and exits 0; ``--check`` asks the service to
    connect to every dependency and load what it serves with (model, bundle, source), report each, and exit 0 only
    if all passed. A ``StartupError`` becomes one line on stderr and exit status 2.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--print-config", action="store_true", help="print resolved settings (secrets masked)")
    parser.add_argument("--check", action="store_true",
                        help="connect to every dependency, report each, and exit (0 = all passed) instead of serving")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_cls)
    except ValueError as exc:
        print(f"{settings_cls.__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.print_config:
        print(json.dumps(masked_config(settings), indent=2, sort_keys=True))
        return 0
    if settings.memory_snapshot_dir and not args.check:
        from services._memory import start_snapshots

        start_snapshots(settings.memory_snapshot_dir, settings.memory_snapshot_interval_s)
    try:
        return run(settings, args.check)
    except StartupError as exc:
        print(f"{service}: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
