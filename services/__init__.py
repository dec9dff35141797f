"""services: the streaming side of the inspection product.

cameras -> ``ingestor`` -> Kafka ``frames`` -> ``worker`` (micro-batched ddad_core pipeline) -> Redis, object store and
Kafka ``results`` -> ``alerter`` -> Kafka ``defects``. The only public surface shared between services is
``services.contracts``; the underscore modules (``_kafka``, ``_redis``, ``_object_store``, ``_observability``,
``_config``) are private plumbing. See ``services/README.md`` for the topic table.
"""
