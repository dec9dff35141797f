"""Worker settings (environment variables ``WORKER_*``).

Flow step: start-up of Kafka ``frames`` -> ddad_core -> sinks. Batching and delivery semantics are named fields with
their units in the name (Triton's ``max_batch_size`` / ``max_queue_delay``; quix's ``processing_guarantee``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services._config import CommonSettings
from services._kafka import Assignor

# "auto" frame-age limit: the queue delay plus this many full batches at the measured warm-up batch time, and never
# below AUTO_FRAME_AGE_FLOOR_MS (a rebalance or a GC pause must not drop a healthy stream).
AUTO_FRAME_AGE_BATCHES = 10
AUTO_FRAME_AGE_FLOOR_MS = 1000.0


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
    max_frame_age_ms: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Frames captured longer ago than this when their batch forms are not inspected: a "
        "'dropped' record goes to results instead (0 = never drop). 'auto': max_queue_delay_ms + "
        f"{AUTO_FRAME_AGE_BATCHES} x the warm-up batch time, at least {AUTO_FRAME_AGE_FLOOR_MS:.0f} ms; off without "
        "warm-up.")
    rebalance_catch_up_ms: float = Field(
        30000.0, ge=0, description="After partitions are assigned (start-up, a rolling update, a scale-out), frames "
        "up to this much older than the age limit are still inspected, for this long: the backlog that queued while "
        "the consumer group re-formed is caught up, not dropped (0 = no grace).")
    stale_log_interval_s: float = Field(10.0, gt=0, description="Stale drops are logged (warning) at most this "
                                                                "often, with the counts since the last line.")
    min_box_area_fraction: float = Field(
        0.001, ge=0, le=1, description="Connected mask regions smaller than this share of the frame get no "
        "bounding box (0.001 = 4 pixels of a 64x64 mask, 66 of 256x256).")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger frames go to the DLQ (decompression bombs); "
                                                               "checked on the header and the image's own header, "
                                                               "before decoding.")
    max_record_bytes: int = Field(4 * 1024 * 1024, gt=0,
                                  description="Larger records on frames go to the DLQ unparsed (too_large).")
    decode_threads: int = Field(4, ge=1, le=64)
    sink_threads: int = Field(8, ge=1, le=64)
    write_heatmaps: bool = True
    pipeline_depth: int = Field(
        1, ge=0, le=4, description="Batches whose sink writes (masks, Redis, results, flush) may still run on the "
        "writer thread while the next batch is decoded and inferred; offsets are committed only after a batch's "
        "writes are flushed, in order. 0 runs decode, inference and writes of each batch one after the other.")
    result_ttl_s: int = Field(86400, gt=0, description="TTL of the Redis result hash and stream.")
    stream_maxlen: int = Field(1000, gt=0, description="Approximate cap of each per-camera Redis stream.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, time allowed to finish pending frames.")
    warmup: bool = Field(True, description="Run one batch at max_batch_size before reporting ready.")
    compile: bool = Field(
        False, description="torch.compile every network for the batch sizes 1, 2, 4, ... up to max_batch_size "
        "(smaller batches are padded up; compiled during warm-up, before ready). Same scores. On 2 CPU cores it "
        "made TAEF2 about 2x faster but costs about a minute per batch size at start-up; not yet measured on a "
        "GPU, hence off by default.")
    bundle_alias: str | None = Field(
        None, description="Follow a bundle alias of the registry (NAME/ALIAS, e.g. cam-line-1/production; "
        "services/_registry.py) instead of bundle_path: a moved alias is loaded, verified and warmed beside the model "
        "in force and swapped in between batches.")
    bundle_cache_dir: str = Field("/tmp/inspection-bundles", description="Where bundles fetched from the registry "
                                                                          "are kept.")
    bundle_refresh_s: float = Field(2.0, gt=0, description="How often the alias is checked.")
    overlay_product: str | None = Field(
        None, description="Product whose nominal overlay (taught by services.teacher) this worker scores with; the "
        "bundle must have the patch k-NN term. Unset: the bundle's bank alone.")
    overlay_refresh_s: float = Field(1.0, gt=0, description="How often the overlay's version in force is checked.")
    keep_flagged_frames: bool = Field(
        True, description="Keep the bytes of flagged inline frames in the object store (frames/{camera}/{frame}), "
        "so operators' marks can teach and guard the overlay with them.")
    lag_interval_s: float = Field(15.0, gt=0, description="How often consumer lag is measured for the gauge.")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value

    def frame_age_limit_ms(self, warmup_batch_s: float | None) -> float:
        """The stale-drop limit in force (0 = off): the configured one, or "auto" from the warm-up batch time.

        The warm-up batch is the slowest one a process runs (lazy initialisation), so "auto" errs towards keeping
        frames.

        Example:
            >>> s = WorkerSettings(max_queue_delay_ms=50)
            >>> s.frame_age_limit_ms(0.45), s.frame_age_limit_ms(0.02), s.frame_age_limit_ms(None)
            (4550.0, 1000.0, 0.0)
        """
        if self.max_frame_age_ms != "auto":
            return float(self.max_frame_age_ms)
        if warmup_batch_s is None:
            return 0.0
        return round(max(AUTO_FRAME_AGE_FLOOR_MS,
                         self.max_queue_delay_ms + AUTO_FRAME_AGE_BATCHES * warmup_batch_s * 1000.0), 1)

    @model_validator(mode="after")
    def _poll_interval(self) -> WorkerSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self
