"""ddad_core: the D3AD anomaly detector (Tebbe and Tayyub, "Dynamic Addition of Noise in a Diffusion Model for
Anomaly Detection", CVPR workshops 2024, arXiv 2401.04463; built on DDAD, Mousakhan et al., arXiv 2305.15956).

Pure PyTorch: no Kafka, Redis, environment or logging configuration, so it can be used from a notebook.
The method specification with every hyperparameter's source is ``../shared/METHOD.md``; this package's
README lists where we depart from the reference code and why.
"""

from ddad_core.config import DDADConfig, TrainConfig

__all__ = ["DDADConfig", "TrainConfig"]
