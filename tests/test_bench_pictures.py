"""``bench/reconstruction_pictures.py`` on a tiny fitted bundle: one picture with a row per defective image and
the seven panels, the panels computed from the bundle's own autoencoder, UNet and bank."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from tests.ddad_core._helpers import tiny_bundle, write_mvtec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reconstruction_pictures as pictures  # noqa: E402


def test_pictures_of_the_reconstruction(tmp_path):
    data = write_mvtec(tmp_path / "data", n_bad=4)
    bundle = tiny_bundle(tmp_path)
    pipe = DDADPipeline.from_bundle(bundle)
    x = preprocess([np.full((64, 64, 3), 120, np.uint8), np.full((64, 64, 3), 30, np.uint8)], image_size=64)
    panels = pictures.panels_of(pipe, x)
    assert len(panels) == len(pictures.PANELS)
    assert [p.shape for p in panels[:3]] == [(2, 64, 64, 3)] * 3 and [p.shape for p in panels[3:]] == [(2, 64, 64)] * 4
    with torch.inference_mode():
        own = pipe.autoencoder.decode(pipe.autoencoder.encode(x).mean)
    expected = ((own.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(panels[1], expected)  # D(E(x)), not x and not the reconstruction
    assert pictures.main(["--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    picture = tmp_path / "out" / "data_reconstruction.png"
    assert picture.stat().st_size > 10_000
