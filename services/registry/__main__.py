"""``python -m services.registry``: push bundles to the registry, list them, move an alias (deploy or roll back).

Commands (settings from ``REGISTRY_*`` environment variables: Redis, object store, key prefix)::

    python -m services.registry push bundles/my-part --name cam-line-1 --version v3 --actor alice \\
        [--figures eval-labelled.json]              # e.g. `ddad eval` on the product's labelled set
    python -m services.registry list --name cam-line-1
    python -m services.registry alias cam-line-1/production v3 --actor alice    # workers swap within seconds
    python -m services.registry alias cam-line-1/production v2 --actor alice    # rollback: move it back

A bad argument or setting is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic_settings import SettingsConfigDict

from ddad_core.bundle import BundleError
from services._config import EXIT_BAD_CONFIG, CommonSettings, StartupError, load_settings
from services._object_store import open_checked
from services._redis import connect_checked
from services._registry import BundleRegistry, RegistryError


class RegistrySettings(CommonSettings):
    """Settings of ``python -m services.registry`` (only Redis, the object store and the key prefix are used)."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.registry", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="store a bundle directory under NAME/VERSION")
    push.add_argument("bundle_dir")
    push.add_argument("--name", required=True)
    push.add_argument("--version", required=True)
    push.add_argument("--actor", required=True)
    push.add_argument("--figures", help="JSON file of figures to keep with it (e.g. a `ddad eval --json` output)")
    listing = sub.add_parser("list", help="versions of NAME and their manifests")
    listing.add_argument("--name", required=True)
    alias = sub.add_parser("alias", help="point NAME/ALIAS at VERSION (without VERSION: show it)")
    alias.add_argument("alias")
    alias.add_argument("version", nargs="?")
    alias.add_argument("--actor")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "alias" and args.version and not args.actor:
        parser.error("moving an alias needs --actor")
    try:
        settings = load_settings(RegistrySettings)
        client, _ = connect_checked(settings.redis_url, settings.connect_timeout_s)
        store, _ = open_checked(settings.object_store_url, settings.s3_client_kwargs(), settings.connect_timeout_s)
        registry = BundleRegistry(client, store, settings.redis_key_prefix)
        if args.command == "push":
            figures = json.loads(open(args.figures).read()) if args.figures else None
            out = registry.push(args.bundle_dir, args.name, args.version, args.actor, figures)
        elif args.command == "list":
            out = registry.versions(args.name)
        elif args.version:
            out = registry.set_alias(args.alias, args.version, args.actor)
        else:
            out = registry.alias(args.alias)
    except (ValueError, StartupError, RegistryError, BundleError, OSError) as exc:
        print(f"registry {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
