"""Feedback into the training set (``serve --feedback-dir``): the page's and the API's
answers, what is written (and never), the quota and rate, ``imageclf feedback summary``,
and the loop closed: train on the collected folder, reload the server."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time

import jsonschema_rs
import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli
from PIL import Image
from realserver import serving

from imageclf.prediction.predictor import Predictor
from imageclf.web import create_app
from imageclf.web.feedback import LOG_HEADER, MAX_SIDE, ClientRate
from imageclf.web.keys import add_key
from imageclf.web.openapi import build_spec

CLASSES = ["cat", "dog", "=frog"]  # a formula-like class name: the log must escape it


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("fb") / "tiny.safetensors", classes=CLASSES)


def make_app(bundle, folder=None, **config):
    extra = {"IMAGECLF_FEEDBACK_DIR": str(folder)} if folder else {}
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", **extra, **config)


def picture(seed: int, size=(48, 40), fmt="PNG", **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def api_answer(client, data: bytes, answer: str, label: str | None = None, **kw):
    form = {"file": (io.BytesIO(data), "holiday-photo.png"), "answer": answer}
    if label is not None:
        form["label"] = label
    return client.post("/api/v1/feedback", data=form, content_type="multipart/form-data", **kw)


def log_rows(folder) -> list[list[str]]:
    with open(folder / "feedback.csv", newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def stored_files(folder) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*.png") if ".staging" not in p.parts
    )


def page_form(client, data: bytes) -> dict[str, str]:
    """Upload on the page; the feedback form's hidden fields as the page carries them."""
    html = client.post(
        "/predict",
        data={"file": (io.BytesIO(data), "x.png")},
        content_type="multipart/form-data",
    ).text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    shown = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert fields["picture"] == shown  # the picture the page shows, nothing new
    return fields


def test_off_by_default(bundle):
    client = make_app(bundle).test_client()
    html = client.post(
        "/predict",
        data={"file": (io.BytesIO(picture(1)), "x.png")},
        content_type="multipart/form-data",
    ).text
    assert 'id="feedback"' not in html
    response = api_answer(client, picture(1), "right")
    assert response.status_code == 404 and "feedback is off" in response.json["error"]["message"]
    assert client.post("/feedback", data={"answer": "right"}).status_code == 404
    assert "/api/v1/feedback" not in build_spec(make_app(bundle).config)["paths"]


def test_page_answers_keep_the_shown_picture(bundle, tmp_path):
    folder = tmp_path / "fb"
    client = make_app(bundle, folder).test_client()
    fields = page_form(client, picture(2, size=(600, 300)))
    assert fields["shown"] in CLASSES
    wrong = next(c for c in CLASSES if c != fields["shown"])
    page = client.post("/feedback", data={**fields, "answer": "wrong", "label": wrong})
    assert page.status_code == 200 and 'id="thanks"' in page.text
    shown_png = base64.b64decode(fields["picture"])
    (kept,) = stored_files(folder)
    assert kept.split("/")[0] == wrong
    with Image.open(folder / kept) as stored, Image.open(io.BytesIO(shown_png)) as shown:
        assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(shown.convert("RGB")))
    # "right" keeps it under the label the user saw; "none" in the hidden .none/
    client.post("/feedback", data={**fields, "answer": "right"})
    client.post("/feedback", data={**fields, "answer": "none"})
    folders = sorted(p.split("/")[0] for p in stored_files(folder))
    assert folders == sorted([".none", wrong, fields["shown"]])
    rows = log_rows(folder)
    assert rows[0] == LOG_HEADER and len(rows) == 4
    version = client.get("/api/v1/model").json["version"]
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert {r[1] for r in rows[1:]} == {version} and {r[5] for r in rows[1:]} == {"anonymous"}
    assert [r[4] for r in rows[1:]][1:] == [fields["shown"], "none of these"]
    # a page answer without its picture is a 400 page, not a crash
    bare = client.post("/feedback", data={"answer": "right", "picture": "!!"})
    assert bare.status_code == 400 and "without its picture" in bare.text


def test_api_writes_clean_capped_pictures_once(bundle, tmp_path):
    folder = tmp_path / "fb"
    client = make_app(bundle, folder).test_client()
    exif = Image.Exif()
    exif[0x010E] = "secret description"  # ImageDescription
    photo = picture(3, size=(2000, 1000), fmt="JPEG", exif=exif.tobytes(), icc_profile=b"x" * 64)
    first = api_answer(client, photo, "wrong", "dog")
    assert first.status_code == 200, first.json
    body = first.json
    assert body["label"] == "dog" and body["predicted"] in CLASSES and not body["duplicate"]
    kept = folder / body["stored"]
    data = kept.read_bytes()
    assert kept.name == hashlib.sha256(data).hexdigest()[:32] + ".png"  # not the client's name
    assert b"secret" not in data
    with Image.open(kept) as stored:
        assert stored.format == "PNG" and max(stored.size) <= MAX_SIDE
        assert not {"exif", "icc_profile"} & set(stored.info)
    before = kept.stat().st_mtime_ns
    again = api_answer(client, photo, "wrong", "dog").json
    assert again["duplicate"] and again["stored"] == body["stored"]
    assert kept.stat().st_mtime_ns == before and len(stored_files(folder)) == 1
    assert len(log_rows(folder)) == 3  # both answers logged
    # JSON body, and the formula-like class escaped in the log
    b64 = base64.b64encode(picture(4)).decode()
    answer = client.post(
        "/api/v1/feedback", json={"image": {"data": b64}, "answer": "wrong", "label": "=frog"}
    )
    assert answer.status_code == 200 and answer.json["label"] == "=frog"
    row = log_rows(folder)[-1]
    assert row[4] == "'=frog" and row[6].startswith("'=frog/")
    assert not list((folder / ".staging").iterdir())  # nothing left half-written


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"answer": "maybe"}, "answer must be right, wrong or none"),
        ({}, "answer must be right, wrong or none"),
        ({"answer": "wrong"}, "needs label"),
        ({"answer": "wrong", "label": "horse"}, "one of the model's classes"),
    ],
)
def test_bad_answers_are_400(bundle, tmp_path, form, message):
    folder = tmp_path / "fb"
    client = make_app(bundle, folder).test_client()
    data = {"file": (io.BytesIO(picture(5)), "x.png"), **form}
    response = client.post("/api/v1/feedback", data=data, content_type="multipart/form-data")
    assert response.status_code == 400 and message in response.json["error"]["message"]
    assert stored_files(folder) == [] and not (folder / "feedback.csv").exists()


def test_bad_bodies(bundle, tmp_path):
    client = make_app(bundle, tmp_path / "fb").test_client()
    b64 = base64.b64encode(picture(6)).decode()
    cases = [
        ({"image": {"data": b64}, "answer": "right", "extra": 1}, 400, "unknown field"),
        ({"image": {"data": "@@@"}, "answer": "right"}, 400, "not valid base64"),
        ({"image": {"data": b64}, "answer": 3}, 400, "must be strings"),
        ([1], 400, "must be an object"),
    ]
    for body, status, message in cases:
        response = client.post("/api/v1/feedback", json=body)
        assert response.status_code == status and message in response.json["error"]["message"]
    not_a_picture = api_answer(client, b"hello, not an image", "right")
    assert 400 <= not_a_picture.status_code < 500
    assert stored_files(tmp_path / "fb") == []


def test_rate_per_client(bundle, tmp_path):
    client = make_app(
        bundle, tmp_path / "fb", IMAGECLF_FEEDBACK_PER_MINUTE=0.01, IMAGECLF_FEEDBACK_BURST=2
    ).test_client()
    for seed in range(2):
        assert api_answer(client, picture(seed), "right").status_code == 200
    refused = api_answer(client, picture(9), "right")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "too many answers" in refused.json["error"]["message"]
    other = api_answer(client, picture(9), "right", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200
    assert len(stored_files(tmp_path / "fb")) == 3


def test_client_rate_refills_and_forgets():
    rate = ClientRate(per_minute=60, burst=1)
    assert rate.take("a", now=0.0) == 0.0
    assert rate.take("a", now=0.5) == pytest.approx(0.5)
    assert rate.take("a", now=1.0) == 0.0


def test_quota_full_is_507(bundle, tmp_path):
    folder = tmp_path / "fb"
    client = make_app(bundle, folder, IMAGECLF_FEEDBACK_QUOTA_MB=0.01).test_client()
    assert api_answer(client, picture(1, size=(20, 20)), "right").status_code == 200
    full = api_answer(client, picture(2, size=(300, 300)), "right")
    assert full.status_code == 507 and "quota" in full.json["error"]["message"]
    assert len(stored_files(folder)) == 1 and len(log_rows(folder)) == 2


def test_key_name_is_logged(bundle, tmp_path):
    keys = tmp_path / "keys.txt"
    secret = add_key(keys, "labeller")
    folder = tmp_path / "fb"
    client = make_app(bundle, folder, IMAGECLF_API_KEYS=str(keys)).test_client()
    assert api_answer(client, picture(1), "right").status_code == 401
    ok = api_answer(client, picture(1), "right", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200
    assert log_rows(folder)[-1][5] == "labeller"


def test_openapi_describes_feedback(bundle, tmp_path):
    app = make_app(bundle, tmp_path / "fb")
    spec = app.test_client().get("/api/v1/openapi.json").json
    operation = spec["paths"]["/api/v1/feedback"]["post"]
    assert {"200", "400", "429", "507"} <= set(operation["responses"])
    schemas = spec["components"]["schemas"]
    answer = api_answer(app.test_client(), picture(1), "none").json
    jsonschema_rs.validate(schemas["FeedbackResponse"], answer)
    model = app.test_client().get("/api/v1/model").json
    assert "version" in schemas["ModelInfo"]["properties"] and model["version"]


def test_summary_cli(bundle, tmp_path, capsys):
    """The summary of what a server wrote agrees with its log."""
    folder = tmp_path / "fb"
    client = make_app(bundle, folder).test_client()
    said = api_answer(client, picture(1), "right").json["predicted"]
    for seed in range(2, 5):
        api_answer(client, picture(seed), "wrong", "=frog" if said != "=frog" else "dog")
    api_answer(client, picture(6), "none")
    code, out, _ = run_cli(["feedback", "summary", str(folder)], capsys)
    rows = log_rows(folder)[1:]
    wrong = sum(r[2] != r[4] for r in rows)
    assert code == 0 and f"5 answers, {5 - wrong} right, {wrong} wrong" in out
    assert "'=frog" not in out  # the spreadsheet guard is undone for reading


def test_summary_orders_mistakes(tmp_path, capsys):
    folder = tmp_path / "fb"
    folder.mkdir()
    rows = [("cat", "dog")] * 3 + [("dog", "'=frog")] * 2 + [("cat", "cat")] * 4
    rows += [("=frog", "none of these")]
    text = (
        ",".join(LOG_HEADER)
        + "\n"
        + "".join(
            f"2026-01-01T00:00:00+00:00,v1,{p},0.5,{c},anonymous,{c}/x.png\n" for p, c in rows
        )
    )
    (folder / "feedback.csv").write_text(text)
    code, out, _ = run_cli(["feedback", "summary", str(folder), "--top", "2"], capsys)
    assert code == 0 and "10 answers, 4 right, 6 wrong, from 1 model version(s)" in out
    mistakes = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\S+ ->", line)]
    assert mistakes == [["3", "cat", "->", "dog"], ["2", "dog", "->", "=frog"]]  # --top 2
    table = out.split("right %")[1].split()
    # per class, most wrong first: cat 7 answers (4 right, 3 wrong), dog 2/0/2, =frog 1/0/1
    assert table[:5] == ["cat", "7", "4", "3", "57.1%"]
    assert table[5:10] == ["dog", "2", "0", "2", "0.0%"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such folder"),
        (lambda p: p.mkdir(), "holds no feedback.csv"),
        (lambda p: (p.mkdir(), (p / "feedback.csv").write_text("a,b\n1,2\n")), "not a feedback"),
        (
            lambda p: (
                p.mkdir(),
                (p / "feedback.csv").write_text(",".join(LOG_HEADER) + "\nonly,three,cells\n"),
            ),
            "line 2: expected 7 cells",
        ),
    ],
)
def test_summary_errors(tmp_path, capsys, setup, message):
    folder = tmp_path / "fb"
    setup(folder)
    code, _, err = run_cli(["feedback", "summary", str(folder)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def _collect(client, count: int = 8) -> None:
    """Answers for ``count`` pictures of each of two classes (told apart by colour)."""
    for i in range(count):
        for label, channel in (("cat", 0), ("dog", 2)):
            pixels = np.full((40, 40, 3), 30, np.uint8)
            pixels[..., channel] = 200 + (i % 5) * 10
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            answer = "right" if i == 0 else "wrong"
            response = api_answer(client, buffer.getvalue(), answer, label)
            assert response.status_code == 200, response.json


@pytest.mark.slow
def test_the_loop_closes_in_process(bundle, tmp_path, capsys):
    """Collect answers, summarise them, train from the served model on the folder, load it."""
    folder = tmp_path / "fb"
    client = make_app(bundle, folder, IMAGECLF_FEEDBACK_BURST=100).test_client()
    _collect(client)
    code, out, _ = run_cli(["feedback", "summary", str(folder)], capsys)
    assert code == 0 and "16 answers" in out
    out_dir = tmp_path / "runs"
    code, _, err = run_cli(
        ["-q", "train", "--init", str(bundle), "--data", str(folder), "--epochs", "1",
         "--out", str(out_dir), "--name", "retrained"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (new,) = out_dir.rglob("*.safetensors")
    predictor = Predictor.load(new)
    assert sorted(predictor.classes) == ["cat", "dog"]  # .none/ and the log are not classes


@pytest.mark.slow
def test_real_server_feedback_train_and_reload(bundle, tmp_path):
    """``imageclf serve --feedback-dir`` (gunicorn), answers over HTTP, ``imageclf train
    --init`` on the folder, the file replaced and the server reloaded (SIGHUP)."""
    model = tmp_path / "current.safetensors"
    model.write_bytes(bundle.read_bytes())
    folder = tmp_path / "fb"
    env = {"IMAGECLF_FEEDBACK_DIR": str(folder), "IMAGECLF_FEEDBACK_PER_MINUTE": "6000"}
    env["IMAGECLF_ALLOW_CLASS_CHANGE"] = "1"  # the retrained model drops "=frog"
    with serving(model, tmp_path / "srv", workers=1, env=env) as server:
        for i in range(6):
            for label, channel in (("cat", 0), ("dog", 2)):
                pixels = np.full((40, 40, 3), 30, np.uint8)
                pixels[..., channel] = 180 + i * 10
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                body = (
                    '{"image": {"data": "'
                    + base64.b64encode(buffer.getvalue()).decode()
                    + '"}, "answer": "wrong", "label": "'
                    + label
                    + '"}'
                )
                status, _, text = server.request(
                    "POST", "/api/v1/feedback", body, {"Content-Type": "application/json"}
                )
                assert status == 200, text
        old = _version(server)
        summary = subprocess.run(
            [sys.executable, "-m", "imageclf", "feedback", "summary", str(folder)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "12 answers" in summary.stdout
        runs = tmp_path / "runs"
        subprocess.run(
            [sys.executable, "-m", "imageclf", "-q", "train", "--init", str(model),
             "--data", str(folder), "--epochs", "1", "--out", str(runs), "--name", "next"],
            check=True, capture_output=True,
        )  # fmt: skip
        (new,) = runs.rglob("*.safetensors")
        staged = model.with_suffix(".new")
        staged.write_bytes(new.read_bytes())
        os.replace(staged, model)  # atomic: a worker never reads half a file
        server.process.send_signal(signal.SIGHUP)  # the workers check the file and switch
        deadline = time.monotonic() + 90
        # Until a worker with the new file answers: during the switch a request may fail
        # (no version) or reach an old worker (the old version), so both mean "not yet".
        while (answer := _model(server)) is None or answer["version"] == old:
            assert time.monotonic() < deadline, server.text()
            time.sleep(0.5)
        assert "dog" in answer["classes"] and "=frog" not in answer["classes"]  # retrained


def _model(server) -> dict | None:
    """GET /api/v1/model, or None when the request failed (a worker switching)."""
    import json

    try:
        status, _, text = server.request("GET", "/api/v1/model")
    except OSError:
        return None
    return json.loads(text) if status == 200 else None


def _version(server) -> str:
    answer = _model(server)
    return answer["version"] if answer else ""
