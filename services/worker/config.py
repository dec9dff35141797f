"""Worker settings (environment variables ``WORKER_*``).

Flow step: start-up of Kafka ``frames`` -> ddad_core -> sinks. Batching and delivery semantics are named fields with
their units in the name (Triton's ``max_batch_size`` / ``max_queue_delay``; quix's ``processing_guarantee``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings
from services._kafka import Assignor


class WorkerSettings(CommonSettings):
    """Settings of ``python -m services.worker``."""

    model_config = SettingsConfigDict(env_prefix="WORKER_")

    bundle_path: str = Field("/models/bundle", description="Model bundle directory (ddad_core.bundle).")
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Autoencoder/UNet precision; None keeps the pipeline's default (fp32 on CPU).")
    group_id: str = "inspection-worker"
    group_instance_id: str | None = Field(None, description="Static membership id, e.g. the pod name.")
    kafka_assignor: Assignor = "cooperative-sticky"
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    max_poll_interval_ms: int = Field(300000, ge=10000)
    processing_guarantee: Literal["at-least-once"] = "at-least-once"
    max_batch_size: int = Field(8, ge=1, le=1024, description="Hard cap of a micro-batch.")
    max_queue_delay_ms: float = Field(50.0, ge=0, description="Longest wait of the oldest frame for company.")
    max_frame_age_ms: float = Field(10000.0, ge=0, description="Older frames are dropped as stale (0 = never).")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger frames go to the DLQ (decompression bombs).")
    decode_threads: int = Field(4, ge=1, le=64)
    sink_threads: int = Field(8, ge=1, le=64)
    write_heatmaps: bool = True
    result_ttl_s: int = Field(86400, gt=0, description="TTL of the Redis result hash and stream.")
    stream_maxlen: int = Field(1000, gt=0, description="Approximate cap of each per-camera Redis stream.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, time allowed to finish pending frames.")
    sink_retries: int = Field(3, ge=0, description="Retries of the sink/produce steps before the worker exits.")
    warmup: bool = Field(True, description="Run one batch at max_batch_size before reporting ready.")
    lag_interval_s: float = Field(15.0, gt=0, description="How often consumer lag is measured for the gauge.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _poll_interval(self) -> WorkerSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self
