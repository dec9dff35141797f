"""The HTML report as a reader sees it: rendered in headless Chromium (Playwright driving Debian's chromium, or
``$DDAD_CHROMIUM``), every picture decoded at its expected size, legends off the curves, ticked axes, the
thumbnail grid of all test images sortable by score."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ddad_core.evaluation.evaluate import evaluate
from ddad_core.evaluation.report import REPORT_IMAGE_SIZE, THUMBNAIL_SIZE
from ddad_core.evaluation.visualize import colorbar_width
from ddad_core.testing import make_tiny_bundle

from .._helpers import write_mvtec

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("DDAD_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = write_mvtec(root / "data", n_train=4, n_good=4, n_bad=5)
    bundle = make_tiny_bundle(root / "bundle", image_size=64)
    results = evaluate(bundle, data, json_path=root / "r.json", report_dir=root / "report", device="cpu", log=None)
    return root / "report" / "index.html", results


@pytest.fixture(scope="module")
def page(report):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium or set DDAD_CHROMIUM (scripts/bootstrap.sh)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(report[0].as_uri())
        page.wait_for_load_state("load")
        yield page
        browser.close()


def _images(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(
        selector,
        """imgs => Promise.all(imgs.map(img => img.decode().then(
            () => ({ok: true, w: img.naturalWidth, h: img.naturalHeight}),
            () => ({ok: false, w: img.naturalWidth, h: img.naturalHeight}))))""",
    )


def test_every_picture_decodes_at_its_size(page, report):
    _, results = report
    n = results["n_images"]
    overlays = _images(page, "img.overlay")
    pictures = _images(page, "img.picture")
    thumbs = _images(page, "img.thumb")
    # worst misses (5 defective) + worst false alarms (4 good), one overlay and one picture per row
    assert len(overlays) == len(pictures) == 9
    assert len(thumbs) == n == 9
    for image in overlays:
        assert image == {"ok": True, "w": REPORT_IMAGE_SIZE + colorbar_width(REPORT_IMAGE_SIZE), "h": REPORT_IMAGE_SIZE}
    for image in pictures:
        assert image == {"ok": True, "w": REPORT_IMAGE_SIZE, "h": REPORT_IMAGE_SIZE}
    for image in thumbs:
        assert image == {"ok": True, "w": THUMBNAIL_SIZE, "h": THUMBNAIL_SIZE}


def test_legends_sit_below_the_plot_and_axes_have_ticks(page):
    for chart in ("#roc", "#pro", "#histogram"):
        boxes = page.eval_on_selector(
            f"{chart} svg",
            """svg => {
                const box = el => el.getBoundingClientRect();
                const frame = box(svg.querySelector('.frame'));
                return {
                    frameBottom: frame.bottom,
                    legendTops: Array.from(svg.querySelectorAll('.legend')).map(el => box(el).top),
                    xticks: svg.querySelectorAll('.xtick').length,
                    yticks: svg.querySelectorAll('.ytick').length,
                    labels: [svg.querySelector('.xlabel').textContent, svg.querySelector('.ylabel').textContent],
                };
            }""",
        )
        assert boxes["legendTops"], chart
        assert min(boxes["legendTops"]) > boxes["frameBottom"], chart  # below the plot area: covers no curve
        assert boxes["xticks"] >= 3 and boxes["yticks"] >= 3, (chart, boxes)
        assert all(boxes["labels"]), chart
    # the threshold label of the histogram sits above the plot, not on the bars
    above = page.eval_on_selector(
        "#histogram svg",
        "svg => svg.querySelector('.threshold').getBoundingClientRect().bottom "
        "<= svg.querySelector('.frame').getBoundingClientRect().top",
    )
    assert above


def _grid_scores(page) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.score)")]


def test_thumbnail_grid_sorts_by_score_and_name(page, report):
    _, results = report
    scores = _grid_scores(page)
    assert scores == sorted(scores, reverse=True)  # highest first when the page opens
    page.click("#sort-score-asc")
    assert _grid_scores(page) == sorted(scores)
    page.click("#sort-name")
    names = page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.name)")
    assert names == sorted(names) and len(names) == results["n_images"]
    page.click("#sort-score-desc")
    assert _grid_scores(page) == sorted(scores, reverse=True)


def test_screenshot_of_the_rendered_report(page, tmp_path):
    path = tmp_path / "report.png"
    page.screenshot(path=str(path), full_page=True)
    shot = cv2.imread(str(path))
    assert shot is not None and shot.shape[1] == 1280 and shot.shape[0] > 900
    assert np.std(shot) > 10  # not a blank page
