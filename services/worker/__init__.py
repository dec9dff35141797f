"""Worker: Kafka ``frames`` -> micro-batched ddad_core pipeline -> object store, Redis and Kafka ``results``."""
