"""ddad_core: the D3AD anomaly detector (Tebbe and Tayyub, "Dynamic Addition of Noise in a Diffusion Model for
Anomaly Detection", CVPR workshops 2024, arXiv 2401.04463; built on DDAD, Mousakhan et al., arXiv 2305.15956).

Pure PyTorch: no Kafka, Redis, environment or logging configuration, so it can be used from a notebook.
The method specification with every hyperparameter's source is ``docs/method.md``; this package's
README lists where we depart from the reference code and why.

The heavy names (``DDADPipeline``, ``InspectionOutput``, ``load_bundle``) are imported on first use, so that
``import ddad_core.config`` stays light.
"""

from ddad_core.config import DDADConfig, TrainConfig

__all__ = ["DDADConfig", "DDADPipeline", "InspectionOutput", "TrainConfig", "load_bundle"]

_LAZY = {
    "DDADPipeline": "ddad_core.pipeline",
    "InspectionOutput": "ddad_core.outputs",
    "load_bundle": "ddad_core.bundle",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddad_core' has no attribute {name!r}")
