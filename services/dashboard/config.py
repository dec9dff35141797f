"""Dashboard settings (environment variables ``DASHBOARD_*``).

Flow step: start-up of ``defects`` + ``results`` -> operators' web page. The shared Kafka, Redis and object-store
fields come from ``CommonSettings`` (so TLS/SASL settings added there apply here too); ``http_port`` is the page's
port, which also serves ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings, StartupError


class DashboardSettings(CommonSettings):
    """Settings of ``python -m services.dashboard``."""

    model_config = SettingsConfigDict(env_prefix="DASHBOARD_")

    # Optional here and checked by ``require_token`` at start-up: a pydantic error would echo the input values.
    token: SecretStr | None = Field(None, description="Shared secret for the login form and for 'Authorization: "
                                                      "Bearer' clients (required, at least 16 characters). Never "
                                                      "logged, never in the page.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the page, its API and health/metrics; 0 = any.")
    bind_host: str = Field("0.0.0.0", description="Interface the page listens on.")
    group_id: str = Field("inspection-dashboard", description="Own consumer group on defects and results.")
    start_from: Literal["latest", "earliest"] = Field(
        "latest", description="Where a new consumer group starts: the feed's past comes from Redis, not a replay.")
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    session_ttl_s: int = Field(12 * 3600, ge=60, description="Lifetime of a login (signed session cookie).")
    cookie_secure: bool = Field(False, description="Mark the session cookie Secure (set it when served over TLS).")
    stale_after_s: float = Field(10.0, gt=0, description="A camera with no frame for this long shows a warning.")
    sparkline_points: int = Field(60, ge=2, le=1000, description="Recent scores per camera tile.")
    feed_size: int = Field(50, ge=1, le=500, description="Alerts in the live feed.")
    page_size: int = Field(25, ge=1, le=500, description="History rows per page.")
    history_scan_limit: int = Field(5000, ge=10, description="Most alerts a filtered history query looks at.")
    alert_ttl_s: int = Field(7 * 86400, gt=0, description="TTL of alert records the dashboard writes (as alerter).")
    feedback_ttl_s: int = Field(90 * 86400, gt=0, description="TTL of the feedback state of an alert in Redis.")
    tick_s: float = Field(1.0, gt=0, le=60, description="How often tiles and the connection state are pushed.")

    def require_token(self) -> str:
        """The token, or ``StartupError`` naming ``DASHBOARD_TOKEN`` (without echoing it)."""
        if self.token is None or not self.token.get_secret_value():
            raise StartupError("DASHBOARD_TOKEN is not set: every page, stream, image and action needs it")
        if len(self.token.get_secret_value()) < 16:
            raise StartupError("DASHBOARD_TOKEN is too short (at least 16 characters; e.g. "
                               "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
        return self.token.get_secret_value()
