"""The ``ddad`` command line: fit -> eval (JSON + HTML report) -> predict, and exit codes on bad input."""

from __future__ import annotations

import json

import pytest

from ddad_core.cli import main, parser
from ddad_core.fitting.recipes import RECIPES

from ._helpers import write_mvtec

REQUIRED_KEYS = {"image_auroc", "pixel_auroc", "aupro", "aupro_paper", "f1_max", "n_images", "seconds_per_image"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_mvtec(root / "data", n_train=10, n_good=3, n_bad=3)
    argv = [
        "fit", str(data), "--out", str(root / "bundle"), "--preset", "cpu", "--epochs", "1", "--da-epochs", "1",
        "--guidance", "4", "--image-size", "64", "--autoencoder", "conv", "--ae-epochs", "1",
        "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return root, data, root / "bundle"


def test_parser_contract():
    args = parser.parse_args(["fit", "d", "--out", "b"])
    assert args.preset == "cpu" and args.autoencoder is None and args.backbone is None
    args = parser.parse_args(["eval", "b", "d", "--json", "o.json", "--report", "r"])
    assert str(args.json_path) == "o.json" and str(args.report) == "r"
    args = parser.parse_args(["predict", "b", "x.png", "y.png", "--out", "o"])
    assert [str(p) for p in args.images] == ["x.png", "y.png"]
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "d", "--out", "b", "--preset", "gpu"])


def test_eval_writes_json_and_report(fitted, capsys):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(data), "--json", str(root / "r.json"), "--report", str(root / "rep")]) == 0
    results = json.loads((root / "r.json").read_text())
    assert REQUIRED_KEYS <= set(results)
    assert results["n_images"] == 6
    assert REQUIRED_KEYS - {"seconds_per_image"} <= set(results["per_defect_type"]["blob"])
    page = (root / "rep" / "index.html").read_text()
    for marker in ("<svg", "ROC", "PRO curve", "Image scores", "threshold", "Worst misses", "false alarms", "base64"):
        assert marker in page
    assert "image AUROC" in capsys.readouterr().out


def test_eval_lists_undecodable_images(fitted, tmp_path, capsys):
    import shutil

    root, data, bundle = fitted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "test" / "good" / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    assert main(["eval", str(bundle), str(copy), "--json", str(tmp_path / "r.json")]) == 0
    assert "zz_corrupt.png" in capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["n_images"] == 6 and results["skipped_images"][0].endswith("zz_corrupt.png")


def test_eval_paper_normalization(fitted, tmp_path, capsys):
    root, data, production = fitted
    bundle = tmp_path / "paper_bundle"
    argv = [
        "fit", str(data), "--out", str(bundle), "--recipe", "paper", "--epochs", "1", "--image-size", "64",
        "--autoencoder", "conv", "--ae-epochs", "1", "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    argv = ["eval", str(bundle), str(data), "--json", str(root / "p.json"), "--normalization", "paper"]
    assert main(argv) == 0
    results = json.loads((root / "p.json").read_text())
    assert results["normalization"] == "paper" and "at_threshold" not in results
    assert results["recipe"] == "paper v1" and results["settings"]["component_norm"] == "minmax"
    # Test-set min-max does not apply to a recipe that normalises per position: one line, exit 2.
    capsys.readouterr()
    argv = ["eval", str(production), str(data), "--json", str(root / "q.json"), "--normalization", "paper"]
    assert main(argv) == 2
    assert "normalises each position" in capsys.readouterr().err


def test_fit_unknown_recipe_fails_before_fitting(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "d", "--out", str(tmp_path / "b"), "--recipe", "fastest"])
    err = capsys.readouterr().err
    assert "paper" in err and "production" in err and not (tmp_path / "b").exists()


def test_eval_states_the_recipe(fitted):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(data), "--json", str(root / "recipe.json")]) == 0
    results = json.loads((root / "recipe.json").read_text())
    assert results["recipe"] == f"production v{RECIPES['production'].version}"
    assert results["settings"]["knn_weight"] > 0 and results["settings"]["component_norm"] == "position"


def test_predict_writes_overlays_and_masks(fitted, capsys):
    root, data, bundle = fitted
    images = [data / "test" / "blob" / "000.png", data / "test" / "good" / "000.png", root / "not_an_image.png"]
    images[2].write_bytes(b"garbage")
    assert main(["predict", str(bundle), *map(str, images), "--out", str(root / "pred")]) == 0
    out = capsys.readouterr()
    assert "pred_score=" in out.out and "not_an_image.png" in out.err
    written = sorted(p.name for p in (root / "pred").iterdir())
    assert "predictions.json" in written
    assert sum(name.endswith("_overlay.png") for name in written) == 2  # same stem in two folders: both kept
    assert sum(name.endswith("_mask.png") for name in written) == 2


def test_errors_exit_with_code_2(fitted, tmp_path, capsys):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(tmp_path / "missing"), "--json", str(tmp_path / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), str(data), "--json", str(tmp_path / "x.json")]) == 2
    assert "bundle.json" in capsys.readouterr().err
    argv = ["eval", str(bundle), str(data), "--json", str(tmp_path / "x.json"), "--backbone", "resnet34"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "test_resnet" in err and "resnet34" in err
    (tmp_path / "flat").mkdir()
    assert main(["fit", str(tmp_path / "flat"), "--out", str(tmp_path / "b")]) == 2
    assert "missing folder 'train'" in capsys.readouterr().err
