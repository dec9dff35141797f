"""``python -m services.registry`` on a real Redis and a local object store: push, list, alias, rollback, and one-line
refusals of what cannot be done."""

from __future__ import annotations

import json
import uuid

import pytest

from ddad_core.bundle import bundle_hash
from ddad_core.testing import make_tiny_bundle
from services._object_store import LocalObjectStore
from services._redis import connect
from services._registry import BundleRegistry
from services.registry.__main__ import main


@pytest.fixture
def env(redis_url, tmp_path, monkeypatch):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REGISTRY_REDIS_URL", redis_url)
    monkeypatch.setenv("REGISTRY_REDIS_KEY_PREFIX", prefix)
    monkeypatch.setenv("REGISTRY_OBJECT_STORE_URL", f"file://{tmp_path / 'objects'}")
    return BundleRegistry(connect(redis_url), LocalObjectStore(tmp_path / "objects"), prefix)


def test_push_list_alias_and_rollback(env, tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "b", num_images=20, recipe="fast")
    (tmp_path / "eval.json").write_text(json.dumps({"image_auroc": 0.93}))
    assert main(["push", str(bundle), "--name", "line-1", "--version", "v1", "--actor", "alice",
                 "--figures", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["bundle_hash"] == bundle_hash(bundle) and pushed["figures"] == {"image_auroc": 0.93}
    assert main(["push", str(bundle), "--name", "line-1", "--version", "v2", "--actor", "alice"]) == 0
    capsys.readouterr()
    assert main(["list", "--name", "line-1"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)) == ["v1", "v2"]
    assert main(["alias", "line-1/production", "v2", "--actor", "alice"]) == 0
    assert main(["alias", "line-1/production", "v1", "--actor", "bob"]) == 0  # rollback
    capsys.readouterr()
    assert main(["alias", "line-1/production"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["previous"], shown["actor"]) == ("v1", "v2", "bob")
    version, path = env.resolve("line-1/production", tmp_path / "cache")
    assert version == "v1" and bundle_hash(path) == bundle_hash(bundle)


@pytest.mark.parametrize(("argv", "message"), [
    (["alias", "line-1/production", "v9", "--actor", "a"], "no bundle line-1/v9"),
    (["alias", "no-slash", "v1", "--actor", "a"], "must be NAME/ALIAS"),
    (["push", "/nonexistent", "--name", "line-1", "--version", "v1", "--actor", "a"], "/nonexistent"),
    (["push", "/nonexistent", "--name", "bad name", "--version", "v1", "--actor", "a"], "bundle name 'bad name'"),
])  # fmt: skip
def test_refusals_are_one_line(env, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
