"""The bundle registry: bundles in the object store under name and version, and aliases that workers follow.

Flow step: ``python -m services.registry push`` -> object store (+ Redis listing); ``alias`` -> Redis change record
-> workers load, verify and warm the new bundle beside the old one and swap between batches
(``services.worker.bundles``); moving the alias back is the rollback.

Object keys: ``bundles/{name}/{version}/bundle.json``, ``.../<group>.safetensors`` (the bundle's own files, written
once) and ``.../manifest.json`` (name, version, ``bundle_hash``, ``model_version``, recipe, who pushed it, and the
figures given at push time, e.g. ``ddad eval`` on the product's labelled set). Redis keys (with the optional
prefix): ``bundle:{name}:versions`` (hash version -> manifest JSON) and ``bundle-alias:{name}/{alias}`` (hash:
``version``, ``bundle_hash``, ``model_version``, ``changed_at``, ``actor``, ``previous``). An alias names
``{name}/{alias}``, for example ``cam-line-1/production``.

A fetched bundle is verified twice: ``bundle.json``'s SHA-256 must be the manifest's ``bundle_hash``, and loading
checks every tensor file against ``bundle.json`` (``ddad_core.bundle.load_bundle``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from ddad_core.bundle import BUNDLE_CONFIG_NAME, BundleError, bundle_hash, read_bundle_config
from services._object_store import ObjectStore

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class RegistryError(ValueError):
    """An unknown name, version or alias, a malformed one, or a bundle that fails its hash (the message names it)."""


def _check(kind: str, value: str) -> str:
    if not _NAME.match(value) or value in (".", ".."):
        raise RegistryError(f"{kind} {value!r} must be 1-100 letters, digits, '.', '_' or '-'")
    return value


def split_alias(alias: str) -> tuple[str, str]:
    """``"cam-line-1/production"`` -> ``("cam-line-1", "production")``."""
    name, sep, label = alias.partition("/")
    if not sep:
        raise RegistryError(f"alias {alias!r} must be NAME/ALIAS, e.g. cam-line-1/production")
    return _check("bundle name", name), _check("alias", label)


class BundleRegistry:
    """Push, list, alias and fetch bundles.

    Args:
        client: ``redis.Redis`` with ``decode_responses=True``.
        store: The deployment's object store.
        prefix: Redis key prefix (per environment).
    """

    def __init__(self, client: redis.Redis, store: ObjectStore, prefix: str = "") -> None:
        self.client = client
        self.store = store
        self.prefix = f"{prefix}:" if prefix else ""

    def _versions_key(self, name: str) -> str:
        return f"{self.prefix}bundle:{name}:versions"

    def _alias_key(self, alias: str) -> str:
        name, label = split_alias(alias)
        return f"{self.prefix}bundle-alias:{name}/{label}"

    @staticmethod
    def _object_key(name: str, version: str, file: str) -> str:
        return f"bundles/{name}/{version}/{file}"

    def push(
        self, bundle_dir: str | Path, name: str, version: str, actor: str, figures: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store a bundle directory as ``name``/``version`` (refused if that version exists with other content).

        Raises:
            RegistryError: bad name or version, or the version exists with another hash.
            BundleError: the directory is not a bundle.
        """
        _check("bundle name", name)
        _check("version", version)
        root = Path(bundle_dir)
        config = read_bundle_config(root)
        digest = bundle_hash(root)
        existing = self.manifest(name, version, missing_ok=True)
        if existing is not None and existing["bundle_hash"] != digest:
            raise RegistryError(
                f"{name}/{version} exists with bundle hash {existing['bundle_hash'][:12]}; push under a new version"
            )
        for group in config.files:
            file = f"{group}.safetensors"
            self.store.put(self._object_key(name, version, file), (root / file).read_bytes())
        self.store.put(
            self._object_key(name, version, BUNDLE_CONFIG_NAME),
            (root / BUNDLE_CONFIG_NAME).read_bytes(),
            "application/json",
        )
        manifest = {
            "name": name,
            "version": version,
            "bundle_hash": digest,
            "model_version": config.model_version,
            "recipe": config.recipe,
            "files": sorted(config.files),
            "pushed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "actor": actor,
            "figures": figures or {},
        }
        data = json.dumps(manifest, sort_keys=True)
        self.store.put(self._object_key(name, version, "manifest.json"), data.encode(), "application/json")
        self.client.hset(self._versions_key(name), version, data)
        return manifest

    def versions(self, name: str) -> dict[str, dict[str, Any]]:
        """Version -> manifest of every pushed version of ``name``."""
        return {
            v: json.loads(m) for v, m in self.client.hgetall(self._versions_key(_check("bundle name", name))).items()
        }

    def manifest(self, name: str, version: str, missing_ok: bool = False) -> dict[str, Any] | None:
        value = self.client.hget(self._versions_key(name), version)
        if value is None:
            if missing_ok:
                return None
            raise RegistryError(f"no bundle {name}/{version} in the registry")
        return json.loads(value)

    def set_alias(self, alias: str, version: str, actor: str) -> dict[str, Any]:
        """Point ``alias`` at ``version`` of its bundle name (workers following it swap within seconds).

        Raises:
            RegistryError: bad alias, or no such version.
        """
        name, _ = split_alias(alias)
        manifest = self.manifest(name, version)
        key = self._alias_key(alias)
        previous = self.client.hget(key, "version") or ""
        record = {
            "version": version,
            "bundle_hash": manifest["bundle_hash"],
            "model_version": manifest["model_version"],
            "changed_at": datetime.now(UTC).isoformat(),
            "actor": actor,
            "previous": previous,
        }
        self.client.hset(key, mapping=record)
        return record

    def alias_version(self, alias: str) -> str | None:
        """The version an alias points at (one ``HGET``: what workers poll)."""
        return self.client.hget(self._alias_key(alias), "version")

    def alias(self, alias: str) -> dict[str, str] | None:
        return self.client.hgetall(self._alias_key(alias)) or None

    def fetch(self, name: str, version: str, cache_dir: str | Path) -> Path:
        """The bundle's directory under ``cache_dir`` (downloaded once), checked against the manifest's hash.

        Raises:
            RegistryError: no such version, or ``bundle.json`` fails the manifest's hash.
        """
        manifest = self.manifest(name, version)
        target = Path(cache_dir) / name / version / manifest["bundle_hash"][:16]
        if not (target / BUNDLE_CONFIG_NAME).exists():
            partial = target.with_name(target.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            for file in [f"{group}.safetensors" for group in manifest["files"]] + [BUNDLE_CONFIG_NAME]:
                uri = self.store.uri_for(self._object_key(name, version, file))
                (partial / file).write_bytes(self.store.get(uri))
            partial.rename(target)
        if bundle_hash(target) != manifest["bundle_hash"]:
            raise RegistryError(f"{name}/{version}: {target / BUNDLE_CONFIG_NAME} fails the manifest's hash")
        return target

    def resolve(self, alias: str, cache_dir: str | Path) -> tuple[str, Path]:
        """``(version, local bundle directory)`` of what ``alias`` points at.

        Raises:
            RegistryError: the alias points nowhere, or its bundle cannot be fetched and verified.
        """
        name, _ = split_alias(alias)
        version = self.alias_version(alias)
        if version is None:
            raise RegistryError(f"alias {alias} points at no version (set it: python -m services.registry alias)")
        try:
            return version, self.fetch(name, version, cache_dir)
        except BundleError as exc:
            raise RegistryError(f"{alias} -> {version}: {exc}") from None
