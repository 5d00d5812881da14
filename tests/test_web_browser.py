"""The upload page in a real browser (Playwright driving Debian's Chromium).

Skips when Playwright or /usr/bin/chromium is missing, unless IMAGECLF_REQUIRE_BROWSER=1
(CI), where that is a failure. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_bundle
from PIL import Image, ImageDraw

from imageclf.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}}
DARK = {**DESKTOP, "color_scheme": "dark"}


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never 'playwright install')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        if os.environ.get("IMAGECLF_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (IMAGECLF_REQUIRE_BROWSER=1 makes this a failure)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    """The app on a local socket in a thread (the gunicorn path is test_web_server's)."""
    from werkzeug.serving import make_server

    # CIFAR-10's class names: the upload page shows examples of the model's own classes.
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
    # Threshold 0: a random model is never "unsure", so pages show the confident layout.
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("browser") / "tiny.safetensors",
        classes=classes,
        calibration={"temperature": 1.0, "threshold": 0.0},
    )
    app = create_app(bundle, IMAGECLF_MODEL_LOADING="eager")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def page(browser, request):
    """A fresh page; fails the test on any console error (a CSP violation included)."""
    context = browser.new_context(**getattr(request, "param", DESKTOP))
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    assert errors == [], errors


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def picture_png() -> bytes:
    """A little scene (sky, sun, hill): something a person can recognise in a screenshot."""
    image = Image.new("RGB", (320, 240), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((220, 30, 280, 90), fill=(250, 210, 60))
    draw.polygon([(0, 240), (0, 170), (120, 120), (320, 190), (320, 240)], fill=(70, 140, 70))
    draw.rectangle((60, 150, 110, 200), fill=(160, 60, 50))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def choose(page, data: bytes, name: str = "scene.png", mime: str = "image/png") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def expect_result(page) -> None:
    page.wait_for_selector("#label")
    assert re.fullmatch(r"[a-z]+", page.text_content("#label").strip())
    assert re.fullmatch(r"\d+\.\d% confidence", page.inner_text("#confidence"))
    assert page.locator("#top li").count() == 5
    assert page.locator("#uploaded").evaluate("img => img.naturalWidth") > 0
    try:
        import imageclf.gradcam  # noqa: F401
    except ImportError:
        return
    assert page.locator("#overlay").evaluate("img => img.naturalWidth") > 0


# ---------------------------------------------------------------- the main path
def test_choose_preview_submit_result(page, base_url):
    page.goto(base_url)
    assert "PNG, JPEG, GIF, WebP, BMP" in page.inner_text("#dropzone")
    shot(page, "01-index")
    choose(page, picture_png())
    page.wait_for_selector("#preview", state="visible")
    assert page.locator("#preview").evaluate("img => img.naturalWidth") == 320
    assert "scene.png" in page.inner_text("#file-name")
    shot(page, "02-preview")
    with page.expect_navigation():
        page.click("#submit")
    expect_result(page)
    shot(page, "03-result")
    page.click("#again")
    page.wait_for_selector("#upload-form")


@pytest.mark.parametrize("page", [PHONE], indirect=True)
def test_phone_layout(page, base_url):
    page.goto(base_url)
    shot(page, "04-index-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["viewport"]["width"]  # nothing overflows sideways
    choose(page, picture_png())
    with page.expect_navigation():
        page.click("#submit")
    expect_result(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]
    shot(page, "05-result-phone")


@pytest.mark.parametrize("page", [DARK], indirect=True)
def test_example_click_dark_mode(page, base_url):
    page.goto(base_url)
    with page.expect_navigation():
        page.locator("button.example").first.click()
    expect_result(page)
    shot(page, "06-result-example-dark")


# ---------------------------------------------------------------- refused in the browser
def test_too_large_file_is_refused_in_the_browser(page, base_url):
    page.goto(base_url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if r.method == "POST" else None)
    choose(page, b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 1024 * 1024), "huge.png")
    message = page.locator("#client-error")
    message.wait_for(state="visible")
    assert "5 MB" in message.inner_text() and "6.0 MB" in message.inner_text()
    assert page.locator("#file").evaluate("input => input.files.length") == 0
    assert page.locator("#preview").is_hidden()
    shot(page, "07-too-large")
    page.click("#submit")  # nothing chosen any more: the page says so, sends nothing
    assert "Choose an image first" in message.inner_text()
    assert requests == []


def test_wrong_type_is_refused_in_the_browser(page, base_url):
    page.goto(base_url)
    choose(page, b"%PDF-1.4\n", "paper.pdf", "application/pdf")
    message = page.locator("#client-error")
    message.wait_for(state="visible")
    assert "paper.pdf" in message.inner_text()


# ---------------------------------------------------------------- drag and drop, paste
def _drop_file(page, target: str, event: str) -> None:
    data = list(picture_png())
    page.evaluate(
        """([selector, bytes, kind]) => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const target = document.querySelector(selector);
            const init = {bubbles: true, cancelable: true};
            const ev = kind === "drop"
                ? new DragEvent("drop", {...init, dataTransfer: transfer})
                : new ClipboardEvent("paste", {...init, clipboardData: transfer});
            target.dispatchEvent(ev);
        }""",
        [target, data, event],
    )


@pytest.mark.parametrize(("target", "event"), [("#dropzone", "drop"), ("body", "paste")])
def test_drop_and_paste_fill_the_form(page, base_url, target, event):
    page.goto(base_url)
    _drop_file(page, target, event)
    page.wait_for_selector("#preview", state="visible")
    assert page.locator("#file").evaluate("input => input.files[0].name") == "dropped.png"
    with page.expect_navigation():
        page.click("#submit")
    expect_result(page)


# ---------------------------------------------------------------- without JavaScript
def test_works_without_javascript(browser, base_url):
    context = browser.new_context(java_script_enabled=False, **DESKTOP)
    page = context.new_page()
    try:
        page.goto(base_url)
        choose(page, picture_png())
        with page.expect_navigation():
            page.click("#submit")
        expect_result(page)
        page.goto(base_url)
        choose(page, b"%PDF-1.4\n", "paper.pdf", "application/pdf")
        with page.expect_navigation():
            page.click("#submit")
        assert "415" in page.inner_text("#server-error")
        assert "PNG, JPEG, GIF, WEBP, BMP" in page.inner_text("#server-error")
        shot(page, "08-server-error-no-js")
    finally:
        context.close()


def test_result_bars_match_probabilities(page, base_url):
    page.goto(base_url)
    choose(page, picture_png())
    with page.expect_navigation():
        page.click("#submit")
    widths = page.locator("#top .fill").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect().width)"
    )
    values = [float(v.rstrip("%")) for v in page.locator("#top .bar-value").all_inner_texts()]
    track = page.locator("#top .track").first.evaluate("r => r.getBoundingClientRect().width")
    assert widths == sorted(widths, reverse=True)
    for width, value in zip(widths, values, strict=True):
        assert width == pytest.approx(track * value / 100, abs=1.5)
    assert np.isclose(sum(values), sum(values))  # all finite
