"""Alerter: Kafka ``results`` -> per-camera rules (sensitivity, N-of-M debounce, cooldown) -> Kafka ``defects``."""
