"""Ingestor settings (environment variables ``INGESTOR_*``); one process per camera.

Flow step: start-up of camera -> ``frames``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings
from services.contracts.frames import Identifier


class IngestorSettings(CommonSettings):
    """Settings of ``python -m services.ingestor``."""

    model_config = SettingsConfigDict(env_prefix="INGESTOR_")

    camera_id: Identifier = "cam-1"
    line_id: Identifier = "line-1"
    product_id: Identifier | None = None
    source: str = Field("0", description="Image folder, video file, rtsp://... / http://... URL or a device index.")
    source_kind: Literal["auto", "folder", "video", "camera"] = "auto"
    loop: bool = Field(False, description="Folder/video: start again at the end instead of stopping.")
    fps: float = Field(10.0, ge=0, description="Frame-rate cap (0 = as fast as the source delivers).")
    max_frames: int = Field(0, ge=0, description="Stop after this many frames (0 = never).")
    encoding: Literal["jpeg", "png"] = Field(
        "jpeg", description="jpeg (small, lossy) or png (lossless: use it when the model was calibrated on lossless "
        "images; JPEG artefacts on fine textures raise anomaly scores)")
    jpeg_quality: int = Field(90, ge=1, le=100)
    inline_limit_bytes: int = Field(900_000, gt=0, le=10_000_000,
                                    description="Larger encoded frames go to the object store (claim check).")
    buffer_frames: int = Field(64, ge=1, description="Frames held while the broker is slow.")
    drop_policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="What a full buffer drops: oldest keeps the stream fresh (inspection default).")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    send_timeout_ms: int = Field(5000, gt=0, description="How long one send may wait for a free in-flight slot "
                                                         "before the frame is dropped (broker_timeout).")
    max_inflight_frames: int = Field(256, ge=1, description="Frames sent but not yet acknowledged by the brokers; "
                                                            "at the limit sends wait (broker down) and the capture "
                                                            "buffer drops by drop_policy.")
