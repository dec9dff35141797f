"""The demo's pieces that run after the stream: gallery images read back through the object store, log scanning."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np

from devtools.demo import log_errors, write_gallery
from services._object_store import LocalObjectStore
from services.contracts.defects import DefectAlert, alert_id_for
from services.worker.inference import encode_mask_png


def test_gallery_embeds_the_mask_from_the_object_store(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    uri = store.put("masks/cam-1/f1.png", encode_mask_png(mask), "image/png")
    (tmp_path / "streams" / "cam-1").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "streams" / "cam-1" / "0001_defect_hole.png"), np.zeros((8, 8, 3), np.uint8))
    now = datetime.now(UTC)
    alert = DefectAlert(alert_id=alert_id_for("f1"), frame_id="f1", camera_id="cam-1", line_id="l", captured_at=now,
                        raised_at=now, pred_score=0.9, pred_score_raw=2.0, threshold=0.5, sensitivity=0.5,
                        severity="high", debounce="1/1", model_version="m", mask_uri=uri,
                        heatmap_uri=store.uri_for("heatmaps/cam-1/absent.png"), source="0001_defect_hole.png")
    page = tmp_path / "gallery.html"
    write_gallery(page, [alert], store, tmp_path / "streams", {"cam-1": {"0001_defect_hole.png": "hole"}})
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2  # the frame with its boxes, and the mask read back from the store
    assert "<i>missing</i>" in html and "planted: hole" in html  # the absent heatmap is named, not a broken page


def test_log_errors_finds_error_lines_and_tracebacks(tmp_path):
    (tmp_path / "worker.log").write_text('{"event": "batch_done", "level": "info"}\n'
                                         '{"event": "sinks_failed", "level": "error"}\n')
    (tmp_path / "alerter.log").write_text("Traceback (most recent call last):\n  File x\nAttributeError: y\n")
    (tmp_path / "ingestor-cam-1.log").write_text('{"event": "ingestor_stopped", "level": "info"}\n')
    found = log_errors(tmp_path)
    assert [f.split(":")[0] for f in found] == ["alerter.log", "worker.log"]
