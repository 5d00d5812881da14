"""A multi-label model's result page in a real browser (the fixtures and rules of
test_web_browser.py): its labels listed with bars, each bar marked at the label's
threshold, and "no label above its threshold" said plainly. Screenshots in
artifacts/screenshots/."""

from __future__ import annotations

import threading

import pytest
import test_web_browser as web
from helpers import make_tiny_multilabel_bundle
from test_web_browser import DESKTOP, PHONE, choose, picture_png, shot

from imageclf import Predictor
from imageclf.web import create_app

# test_web_browser's fixtures: Chromium (skipped, or failed in CI, without it) and a fresh
# page that fails the test on any console error.
browser = web.browser
page = web.page

CLASSES = ["sky", "sun", "hill", "house", "tree"]
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7]


def _serve(app):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(bundle, URL with the bundle's thresholds, URL with serve --threshold 0.999)."""
    bundle = make_tiny_multilabel_bundle(
        tmp_path_factory.mktemp("ml-browser") / "ml.safetensors", CLASSES, THRESHOLDS
    )
    running = [
        _serve(create_app(bundle, IMAGECLF_MODEL_LOADING="eager")),
        _serve(create_app(bundle, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_THRESHOLD=0.999)),
    ]
    yield bundle, *(f"http://127.0.0.1:{s.server_port}" for s, _ in running)
    for server, thread in running:
        server.shutdown()
        thread.join(10)


def _submit(page, url):
    page.goto(url)
    choose(page, picture_png())
    with page.expect_navigation():
        page.click("#submit")


@pytest.mark.parametrize(
    ("page", "kind"), [(DESKTOP, "desktop"), (PHONE, "phone")], indirect=["page"]
)
def test_the_labels_are_listed_with_bars(page, served, kind):
    bundle, url, _ = served
    want = Predictor.load(bundle).predict(picture_png())[0]
    assert len(want) >= 2  # the picture has several labels with this model
    _submit(page, url)
    page.wait_for_selector("#labels")
    assert page.text_content("#label").strip() == ", ".join(label for label, _ in want)
    assert "found 2 labels" in page.text_content(".result-head") or len(want) != 2
    rows = page.locator("#labels li")
    assert rows.count() == len(want)
    names = [t.strip() for t in page.locator("#labels .bar-label").all_inner_texts()]
    assert names == [label for label, _ in want]
    values = page.locator("#labels .bar-value").all_inner_texts()
    assert values == [f"{p * 100:.1f}%" for _, p in want]
    fills = page.locator("#labels .fill").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect())"
    )
    ticks = page.locator("#labels .tick").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect())"
    )
    tracks = page.locator("#labels .track").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect())"
    )
    for fill, tick, track, (label, p) in zip(fills, ticks, tracks, want, strict=True):
        threshold = THRESHOLDS[CLASSES.index(label)]
        assert track["width"] > 100
        assert fill["width"] == pytest.approx(track["width"] * p, abs=1.0)
        middle = tick["x"] + tick["width"] / 2 - track["x"]
        assert middle == pytest.approx(track["width"] * threshold, abs=1.5)
        assert fill["width"] >= middle - 1.5  # on: the fill reaches its threshold
    assert page.locator("#unsure, #outside, #feedback-right").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    shot(page, f"12-result-multilabel-{kind}")


def test_no_label_above_its_threshold_is_said_plainly(page, served):
    _, _, strict_url = served
    _submit(page, strict_url)
    page.wait_for_selector("#no-label")
    assert page.text_content("#no-label").strip() == "No label above its threshold"
    assert page.locator("#labels").count() == 0
    assert page.locator("#top li").count() == 5  # the closest are still shown
    shot(page, "13-result-multilabel-none")


def test_several_pictures_list_their_labels(page, served):
    bundle, url, _ = served
    want = Predictor.load(bundle).predict(picture_png())[0]
    page.goto(url)
    page.set_input_files(
        "#file",
        files=[
            {"name": f"scene-{i}.png", "mimeType": "image/png", "buffer": picture_png()}
            for i in range(2)
        ],
    )
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("#results")
    labels = [t.strip() for t in page.locator(".result-row .row-label").all_text_contents()]
    assert labels == [", ".join(label for label, _ in want)] * 2
    assert page.locator(".result-row.doubtful").count() == 0
    shot(page, "14-results-multilabel")
