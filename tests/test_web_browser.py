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

import pytest
from helpers import make_tiny_bundle
from PIL import Image, ImageDraw

from imageclf.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # A synthetic camera (a moving test pattern) that is allowed without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
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
    confidence = page.inner_text("#confidence")
    if page.locator("#unsure").count():  # the random tiny model is rarely sure of anything
        assert re.search(r"at only \d+\.\d%: below the \d+%", confidence), confidence
    else:
        assert re.fullmatch(r"\d+\.\d% confidence", confidence), confidence
    assert page.locator("#top li").count() == 5
    assert page.locator("#uploaded").evaluate("img => img.naturalWidth") > 0
    try:
        import imageclf.prediction.gradcam  # noqa: F401
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


@pytest.mark.parametrize("page", [PHONE], indirect=True)
def test_a_long_file_name_wraps_on_a_phone(page, base_url):
    """A 200-character name (no spaces to break at) once pushed the result page wider
    than a phone's screen: the page scrolled sideways."""
    name = "holiday-" + "x" * 188 + ".png"
    page.goto(base_url)
    choose(page, picture_png(), name=name)
    page.wait_for_selector("#preview", state="visible")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]
    with page.expect_navigation():
        page.click("#submit")
    expect_result(page)
    assert name in page.inner_text(".filename")  # wrapped, all of it shown
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]
    shot(page, "05b-result-phone-long-name")


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
        assert page.locator("#camera-open").is_hidden()  # the webcam needs JavaScript
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


def _api_top(base_url: str, data: bytes, top_k: int) -> list[tuple[str, float]]:
    """The JSON API's answer for the same picture: what the bars must show."""
    import json
    import urllib.request

    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base_url}/api/v1/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        (prediction,) = json.load(response)["predictions"]
    return [(t["label"], t["probability"]) for t in prediction["top"]]


def test_result_bars_match_probabilities(page, base_url):
    """Five bars, in the API's order, each as long as its probability and labelled with it."""
    picture = picture_png()
    expected = _api_top(base_url, picture, 5)
    page.goto(base_url)
    choose(page, picture)
    with page.expect_navigation():
        page.click("#submit")
    rows = page.locator("#top li")
    assert rows.count() == 5 == len(expected)
    assert page.locator("#top .fill").count() == 5 and page.locator("#top .track").count() == 5
    labels = [t.strip() for t in page.locator("#top .bar-label").all_inner_texts()]
    assert labels == [label for label, _ in expected]
    values = page.locator("#top .bar-value").all_inner_texts()
    assert values == [f"{p * 100:.1f}%" for _, p in expected]
    widths = page.locator("#top .fill").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect().width)"
    )
    tracks = page.locator("#top .track").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect().width)"
    )
    for width, track, (_, p) in zip(widths, tracks, expected, strict=True):
        assert track > 100  # a real bar, not a collapsed one
        assert width == pytest.approx(track * p, abs=1.0)
    assert page.text_content("#label").strip() == expected[0][0]
    assert page.locator("#top li.best .bar-label").inner_text().strip() == expected[0][0]


# ---------------------------------------------------------------- keyboard focus
FOCUS_INDICATOR = """el => {
    // A visually hidden file input shows its focus on the drop zone around it.
    const shown = el.matches('input[type=file]') && el.labels.length ? el.labels[0] : el;
    const style = getComputedStyle(shown);
    return {
        id: el.id || el.getAttribute('name') || el.textContent.trim().slice(0, 20),
        tag: el.tagName,
        shown: shown.id || shown.className,
        outlineStyle: style.outlineStyle,
        outlineWidth: parseFloat(style.outlineWidth),
    };
}"""
CONTROLS = """() => Array.from(document.querySelectorAll('a[href], button, input, select'))
    .filter(el => !el.disabled && el.closest('[hidden]') === null && el.getClientRects().length)
    .length"""


def _tab_through(page) -> list[dict]:
    """Press Tab until focus leaves the page's controls; what had focus at each step."""
    seen: list[dict] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement === document.body"):
            break
        info = page.evaluate_handle("document.activeElement").evaluate(FOCUS_INDICATOR)
        if seen and info == seen[0]:
            break
        seen.append(info)
    return seen


def _region(page, selector: str, pad: int = 8) -> bytes:
    box = page.locator(selector).bounding_box()
    clip = {
        "x": max(0, box["x"] - pad),
        "y": max(0, box["y"] - pad),
        "width": box["width"] + 2 * pad,
        "height": box["height"] + 2 * pad,
    }
    return page.screenshot(clip=clip)


@pytest.mark.parametrize("page", [DESKTOP, DARK], indirect=True)
def test_keyboard_focus_is_visible_on_every_control(page, base_url):
    page.goto(base_url)
    reached = _tab_through(page)
    # Every visible control is reached by Tab, and each shows a focus ring.
    assert len(reached) == page.evaluate(CONTROLS) >= 10, reached
    for item in reached:
        assert item["outlineStyle"] != "none" and item["outlineWidth"] >= 2, item
    assert any(item["shown"] == "dropzone" for item in reached)

    # The drop zone looks different when the (hidden) input has keyboard focus.
    page.goto(base_url)
    page.mouse.move(0, 0)
    unfocused = _region(page, "#dropzone")
    page.keyboard.press("Tab")  # the brand link
    page.keyboard.press("Tab")  # the file input, inside the drop zone
    assert page.evaluate("document.activeElement.id") == "file"
    focused = _region(page, "#dropzone")
    assert focused != unfocused
    dark = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    shot(page, "09-focus-dropzone" + ("-dark" if dark else ""))

    # The result page too: its link back and the footer links.
    choose(page, picture_png())
    with page.expect_navigation():
        page.click("#submit")
    reached = _tab_through(page)
    assert "again" in [item["id"] for item in reached]
    for item in reached:
        assert item["outlineStyle"] != "none" and item["outlineWidth"] >= 2, item


def test_focus_ring_is_not_shown_for_mouse_clicks_on_buttons(page, base_url):
    page.goto(base_url)
    page.locator("#submit").click()  # nothing chosen: the page says so, stays here
    style = page.locator("#submit").evaluate("el => getComputedStyle(el).outlineStyle")
    assert style == "none"


# ---------------------------------------------------------------- webcam
def test_webcam_photo_fills_the_form_and_is_classified(browser, base_url):
    context = browser.new_context(permissions=["camera"], **DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(base_url)
        page.click("#camera-open")
        page.wait_for_function(
            "() => document.getElementById('camera-video').videoWidth > 0", timeout=15000
        )
        assert page.locator("#camera").is_visible()
        shot(page, "10-webcam")
        page.click("#camera-capture")
        page.wait_for_selector("#preview", state="visible")
        assert page.locator("#camera").is_hidden()
        name = page.locator("#file").evaluate("input => input.files[0].name")
        kind = page.locator("#file").evaluate("input => input.files[0].type")
        assert (name, kind) == ("webcam.jpg", "image/jpeg")
        # The camera is released once the photo is taken.
        assert page.evaluate("document.getElementById('camera-video').srcObject") is None
        with page.expect_navigation():
            page.click("#submit")
        expect_result(page)
        assert "webcam.jpg" in page.inner_text("figcaption")
    finally:
        context.close()
    assert errors == [], errors  # the strict CSP allowed all of it


def test_webcam_refused_says_so(browser, base_url):
    context = browser.new_context(**DESKTOP)  # no camera permission granted
    page = context.new_page()
    try:
        page.goto(base_url)
        page.evaluate(
            """() => { navigator.mediaDevices.getUserMedia = () =>
                Promise.reject(new DOMException("denied", "NotAllowedError")); }"""
        )
        page.click("#camera-open")
        message = page.locator("#client-error")
        message.wait_for(state="visible")
        assert "did not allow the camera" in message.inner_text()
        assert page.locator("#camera").is_hidden() and page.locator("#camera-open").is_visible()
    finally:
        context.close()


# ---------------------------------------------------------------- several pictures at once
def _drop_files(page, names: list[str]) -> None:
    data = list(picture_png())
    page.evaluate(
        """([names, bytes]) => {
            const transfer = new DataTransfer();
            for (const name of names) {
                transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            }
            const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
            document.querySelector("#dropzone").dispatchEvent(new DragEvent("drop", init));
        }""",
        [names, data],
    )


@pytest.mark.parametrize(
    ("page", "kind"), [(DESKTOP, "desktop"), (PHONE, "phone")], indirect=["page"]
)
def test_several_photos_dropped_at_once_give_a_result_list(page, base_url, kind):
    """Issue 26: drop several photos on the page (the API already takes 64): a strip of
    previews, then one list with a row per picture, on a desktop and on a phone."""
    names = ["garden.png", "street.png", "beach-at-dusk-with-a-long-name.png"]
    page.goto(base_url)
    _drop_files(page, names)
    page.wait_for_selector("#preview-strip", state="visible")
    assert page.locator("#preview-strip img").count() == 3
    assert page.locator("#file").evaluate("input => input.files.length") == 3
    assert "3 pictures" in page.inner_text("#file-name")
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("#results")
    rows = page.locator(".result-row")
    assert rows.count() == 3
    assert page.locator(".result-row .filename").all_inner_texts() == names
    widths = page.locator(".result-row .thumb").evaluate_all(
        "imgs => imgs.map(i => i.naturalWidth)"
    )
    assert all(w > 0 for w in widths)
    assert "It knows 10 classes" in page.inner_text("#classes")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"]
    shot(page, f"08-several-results-{kind}")


def test_too_many_photos_are_refused_in_the_browser(page, base_url):
    from imageclf.web.pages import PAGE_MAX_FILES

    page.goto(base_url)
    _drop_files(page, [f"{i}.png" for i in range(PAGE_MAX_FILES + 1)])
    message = page.locator("#client-error")
    message.wait_for(state="visible")
    assert f"at most {PAGE_MAX_FILES}" in message.inner_text()
    assert page.locator("#file").evaluate("input => input.files.length") == 0


@pytest.fixture(scope="module")
def outside_url(tmp_path_factory):
    """A model for which every picture is "not one of its classes" (familiar_above huge)."""
    from werkzeug.serving import make_server

    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("outside") / "tiny.safetensors",
        classes=["ant", "bee"],
        calibration={"temperature": 1.0, "threshold": 0.0, "familiar_above": 1e9},
    )
    app = create_app(bundle, IMAGECLF_MODEL_LOADING="eager")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.mark.parametrize(
    ("page", "kind"), [(DESKTOP, "desktop"), (PHONE, "phone")], indirect=["page"]
)
def test_a_picture_of_something_else_is_said_plainly(page, outside_url, kind):
    """Issue 26: "is this one of my classes?" is answered apart from "which class?", and
    the page always says which classes the model knows."""
    page.goto(outside_url)
    choose(page, picture_png())
    with page.expect_navigation():
        page.click("#submit")
    page.wait_for_selector("#outside")
    assert "Probably not one of its 2 classes" in page.text_content(".result-head")
    assert "It knows 2 classes: ant, bee." in page.inner_text("#classes")
    assert page.text_content("#label").strip() in ("ant", "bee")
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    shot(page, f"09-result-outside-{kind}")
