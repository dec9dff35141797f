"""Alerter settings (environment variables ``ALERTER_*``).

Flow step: start-up of results -> rules -> ``defects``. Defaults alert on every anomalous frame (N=1 of M=1, no
cooldown), so nothing is suppressed unless an operator asks for it; production lines usually set 2-of-3 and a
cooldown of a few seconds per camera.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings
from services._kafka import Assignor
from services.alerter.rules import Rule, _rule_fields


class AlerterSettings(CommonSettings):
    """Settings of ``python -m services.alerter``."""

    model_config = SettingsConfigDict(env_prefix="ALERTER_")

    group_id: str = "inspection-alerter"
    group_instance_id: str | None = None
    kafka_assignor: Assignor = "cooperative-sticky"
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    bundle_path: str | None = Field(None, description="Bundle whose calibration provides default rules, if any.")
    sensitivity: float = Field(0.5, ge=0, le=1, description="Default sensitivity (0.5 = calibrated threshold).")
    debounce_n: int = Field(1, ge=1, description="Alert when N of the last M frames of a camera are anomalous.")
    debounce_m: int = Field(1, ge=1)
    cooldown_s: float = Field(0.0, ge=0, description="Per-camera quiet time after an alert (capture time).")
    camera_rules: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='JSON: {"cam1": {"sensitivity": 0.7}, "cam1:productA": {"min_score": 0.8, "debounce_n": 2}}')
    overrides_refresh_s: float = Field(2.0, gt=0, description="How often runtime overrides are re-read from Redis.")
    alert_ttl_s: int = Field(7 * 86400, gt=0)
    max_poll_records: int = Field(256, ge=1)

    @field_validator("camera_rules", mode="before")
    @classmethod
    def _parse_rules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> AlerterSettings:
        if self.debounce_n > self.debounce_m:
            raise ValueError(f"debounce_n ({self.debounce_n}) must not exceed debounce_m ({self.debounce_m})")
        base = self.default_rule()
        for scope, values in self.camera_rules.items():
            try:
                Rule(**{**base.__dict__, **_rule_fields(values)})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"camera_rules[{scope!r}]: {exc}") from None
        return self

    def default_rule(self) -> Rule:
        return Rule(sensitivity=self.sensitivity, debounce_n=self.debounce_n, debounce_m=self.debounce_m,
                    cooldown_s=self.cooldown_s)
