"""Development tools of ddad-inspection: the local servers, the ``inspection-stack`` command and the demo.

Flow step: none. Nothing here runs in production and the container images do not carry this package (they copy
``ddad_core`` and ``services`` only): ``localstack`` runs Kafka, Redis and an S3 server on this machine for the tests,
the demo and the benchmarks; ``stack`` is ``inspection-stack`` (those servers in the foreground, for running the
services by hand); ``demo`` is the end-to-end demo of ``scripts/demo.sh``.
"""
