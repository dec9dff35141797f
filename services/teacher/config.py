"""Teacher settings (environment variables ``TEACHER_*``).

Flow step: start-up of ``feedback`` -> nominal overlay. One teacher per product: it loads the product's bundle
(the overlay's patches are that bundle's features) and is the only writer of the product's overlay versions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings
from services._kafka import Assignor


class TeacherSettings(CommonSettings):
    """Settings of ``python -m services.teacher``."""

    model_config = SettingsConfigDict(env_prefix="TEACHER_")

    product_id: str = Field(
        min_length=1,
        description="The product whose overlay this teacher writes: marks of alerts whose frames carry this "
        "product_id (others are left to their own teacher).",
    )
    bundle_path: str = Field("/models/bundle", description="The bundle the product's workers serve.")
    device: str = Field("cpu", description="Where the frames' patches and the guard's re-scoring run.")
    region: Literal["mask", "frame"] = Field(
        "mask",
        description="What a false alarm teaches: 'mask', the patches above the image threshold (the whole "
        "frame when none is), or 'frame', every patch of the frame.",
    )
    group_id: str = "inspection-teacher"
    kafka_assignor: Assignor = "cooperative-sticky"
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    max_poll_records: int = Field(64, ge=1)
