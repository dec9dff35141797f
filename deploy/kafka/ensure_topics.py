"""The topic Job: create or update the product's Kafka topics from ``topics.yaml`` (idempotent).

Flow step: deployment. Run by the Helm chart's pre-install/pre-upgrade hook Job and by the compose file's
``topics`` service, in the services image::

    python /app/deploy/kafka/ensure_topics.py [--file topics.yaml] [--local]

Without ``--file`` it reads the definitions the installed ``services`` package carries
(``services/contracts/topics.yaml``); the Helm chart passes its rendered copy.

Settings come from ``TOPICS_*`` environment variables, the same Kafka fields every service has
(``TOPICS_KAFKA_BOOTSTRAP_SERVERS``, ``TOPICS_KAFKA_SECURITY_PROTOCOL``, ``TOPICS_KAFKA_SASL_*``, ...,
``TOPICS_TOPIC_PREFIX``, ``TOPICS_CONNECT_TIMEOUT_S``). Missing topics are created with the file's partitions,
replication and configs; existing ones get more partitions when the file asks for more (never fewer) and the file's
configs. Each change is one line on stdout; a bad file or an unreachable cluster is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kafka.errors import KafkaError
from pydantic_settings import SettingsConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing it

from services._config import EXIT_BAD_CONFIG, CommonSettings, StartupError, load_settings  # noqa: E402
from services._kafka import check_kafka, load_topic_specs, reconcile_topics  # noqa: E402
from services.contracts.topics import TOPICS_FILE, Topics  # noqa: E402


class TopicJobSettings(CommonSettings):
    """Settings of the topic Job (``TOPICS_*``): only the Kafka fields and the topic prefix are used."""

    model_config = SettingsConfigDict(env_prefix="TOPICS_")


def main(argv: list[str] | None = None) -> int:
    """Reconcile the topics; 0 on success, 2 on a bad file, bad settings or an unreachable cluster."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=TOPICS_FILE, help=f"topic definitions (default {TOPICS_FILE})")
    parser.add_argument("--local", action="store_true",
                        help="one local broker: keep the broker's replication defaults instead of the file's")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(TopicJobSettings)
        topics = Topics(settings.topic_prefix)
        specs = load_topic_specs(topics, args.file, cluster=not args.local)
        kafka = settings.kafka_kwargs("inspection-topics")
        check_kafka(kafka, settings.connect_timeout_s)
        changes = reconcile_topics(kafka, specs)
    except (ValueError, StartupError, KafkaError) as exc:
        print(f"topics: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    for line in changes.lines() or ["all topics up to date"]:
        print(f"topics: {line}", flush=True)
    print(f"topics: {', '.join(f'{n} ({s.partitions})' for n, s in specs.items())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
