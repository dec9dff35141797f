"""The labelled set: what the line actually produced, as operators marked it, in MVTec layout for ``ddad eval``.

Flow step: Kafka ``feedback`` (every mark, from the beginning) + kept frames in the object store -> a folder::

    OUT/test/good/<frame_id>.<jpg|png>      # the latest verdict was false_alarm: a good part the model flagged
    OUT/test/defect/<frame_id>.<jpg|png>    # the latest verdict was confirm_defect
    OUT/ground_truth/defect/                 # empty: operators do not outline defects (yet)
    OUT/labels.json                          # per file: alert id, camera, who marked it and when; what was skipped

The latest verdict of each alert counts (``acknowledge`` is no verdict, ``withdraw`` takes one back), as in
``python -m services.alerter calibrate``. Operators do not outline defects, so ``ground_truth/defect`` is empty:
the defects count for the image metrics (``ddad eval`` says so). There is no ``train/`` (``ddad eval`` does not
need one). Frames are written with their
original bytes. A mark whose frame is not kept is listed under ``skipped`` in ``labels.json``, never guessed.
Command::

    python -m services.teacher export --out labelled/p1     # TEACHER_PRODUCT_ID, Kafka, object store from TEACHER_*
    ddad eval bundles/p1 labelled/p1 --json eval-labelled.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services._object_store import ObjectStore, stored_frame
from services.contracts.feedback import FeedbackRecord, latest_verdicts

#: Folder of each verdict under ``test/``.
FOLDERS = {"false_alarm": "good", "confirm_defect": "defect"}


def export_labelled_set(
    records: list[FeedbackRecord], product_id: str, store: ObjectStore, out_dir: str | Path
) -> dict[str, Any]:
    """Write the labelled set of ``product_id`` (see the module docstring); returns what ``labels.json`` holds.

    Raises:
        FileExistsError: ``out_dir`` already holds a labelled set (``labels.json``); nothing is overwritten.
    """
    out = Path(out_dir)
    if (out / "labels.json").exists():
        raise FileExistsError(f"{out} already holds a labelled set; choose a new folder")
    files: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    verdicts = latest_verdicts([r for r in records if r.product_id == product_id])
    for alert_id, rec in sorted(verdicts.items()):
        data = stored_frame(store, rec.camera_id, rec.frame_id)
        if data is None:
            skipped[alert_id] = f"frame {rec.frame_id} is not kept in the object store"
            continue
        ext = "png" if data.startswith(b"\x89PNG") else "jpg"
        rel = f"test/{FOLDERS[rec.action]}/{rec.frame_id}.{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        files[rel] = {
            "alert_id": alert_id,
            "camera_id": rec.camera_id,
            "verdict": rec.action,
            "actor": rec.actor,
            "at": rec.at.isoformat(),
        }
    labels = {
        "product_id": product_id,
        "files": files,
        "skipped": skipped,
        "counts": {folder: sum(1 for f in files if f.startswith(f"test/{folder}/")) for folder in FOLDERS.values()},
    }
    (out / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    return labels
