"""The ImageNet gate (``prediction.gate``): stored int8 in the bundle, judging only photos.

The gate's network here has random weights except its head, which is set so that all of
ImageNet's probability falls on one class we choose: then whether a photo is "outside",
and which class the product of experts picks, are known in advance.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from helpers import (
    CLASSES,
    SURE,
    gated_bundle,
    make_tiny_bundle,
    one_line_error,
    post,
    require_pretrained_extra,
    run_cli,
)
from PIL import Image

from imageclf.errors import BundleError
from imageclf.models.bundle import load_bundle, save_bundle
from imageclf.models.metadata import BundleMetadata
from imageclf.prediction.gate import (
    GateSpec,
    combine,
    dequantize,
    imagenet_prior,
    quantize,
)
from imageclf.prediction.predictor import Predictor


def photo(side: int = 300, color=(120, 140, 90)) -> Image.Image:
    rng = np.random.default_rng(side)
    pixels = np.clip(rng.normal(color, 30, (side, side, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def jpeg(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_int8_weights_round_trip_within_half_a_step():
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "conv.bias": torch.randn(8)}
    state["conv.weight"][2] = 0  # an all-zero channel must not divide by zero
    stored = quantize(state)
    assert stored["conv.weight"].dtype == torch.int8
    assert torch.equal(stored["conv.bias"], state["conv.bias"])
    back = dequantize(stored)
    step = stored["conv.weight.scale"].reshape(-1, 1, 1, 1)
    assert bool(((back["conv.weight"] - state["conv.weight"]).abs() <= step / 2 + 1e-7).all())
    assert torch.equal(back["conv.weight"][2], torch.zeros(3, 3, 3))
    del stored["conv.weight.scale"]
    with pytest.raises(BundleError, match="no matching per-channel scale"):
        dequantize(stored)


def test_the_product_of_experts_keeps_the_models_say_where_imagenet_has_none():
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    even = imagenet_prior({"a": [1], "b": [2], "c": [3]}, ["a", "b", "c"])
    out = combine(probs, np.array([[0.0, 0.9, 0.0]]), even)
    assert out.argmax() == 1 and out.sum() == pytest.approx(1)
    # no vote at all: the floor leaves the model's own ranking
    assert combine(probs, np.zeros((1, 3)), even).argmax() == 0
    # a class ImageNet has no name for: the gate says nothing of it, for or against
    unnamed = imagenet_prior({"b": [2], "c": [3]}, ["a", "b", "c"])
    assert unnamed[0] == 0
    out = combine(probs, np.array([[0.0, 0.0, 0.0]]), unnamed)
    np.testing.assert_allclose(out[0, 0], 0.7 / (0.7 + (0.3 * 0.001 / 0.002)), rtol=1e-5)


def test_a_class_imagenet_names_often_does_not_outvote_one_it_names_rarely():
    """A grey horse reads to ImageNet as a Saluki (it names 118 dogs and one horse): the
    model, sure of "horse", must keep it; but a photo ImageNet puts squarely on one of
    its few horses still overrules a model that leans to dog."""
    classes = ["dog", "horse"]
    prior = imagenet_prior({"dog": list(range(151, 269)), "horse": [339, 603]}, classes)
    np.testing.assert_allclose(prior, [0.118, 0.002])
    sure_horse = np.array([[0.03, 0.97]], np.float32)
    saluki = np.array([[0.97, 0.0]])
    assert combine(sure_horse, saluki, prior).argmax() == 1
    assert combine(sure_horse, saluki, np.zeros(2) + 0.06).argmax() == 0  # prior ignored
    leaning_dog = np.array([[0.7, 0.3]], np.float32)
    assert combine(leaning_dog, np.array([[0.05, 0.9]]), prior).argmax() == 1
    # and a clear dog vote still overrules a model leaning to horse
    assert combine(np.array([[0.3, 0.7]], np.float32), np.array([[0.95, 0.0]]), prior).argmax() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "resnet"}, "gate.architecture"),
        ({"side": 224}, "gate.side"),
        ({"outside_below": 1.5}, "outside_below"),
        ({"groups": {"yak": [1]}}, "not a class"),
        ({"groups": {"cat": [1000]}}, "indices 0-999"),
        ({"groups": {"cat": [1, 2], "dog": [2]}}, "repeats an index"),
        ({"groups": {}}, "gate.groups"),
    ],
)
def test_gate_metadata_is_checked(change, message):
    meta = {
        "architecture": "seed-a",
        "arch_kwargs": {},
        "classes": CLASSES,
        "input_size": 32,
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "gate": {**GateSpec(160, 0.25, {"cat": [1]}).to_metadata(), **change},
    }
    with pytest.raises(ValueError, match=message):
        BundleMetadata.check(meta)


def test_a_bundle_carries_its_gate_and_refuses_half_of_one(tmp_path):
    path = gated_bundle(tmp_path / "g.safetensors", {"cat": [SURE]})
    bundle = load_bundle(path)
    assert bundle.metadata["gate"]["groups"] == {"cat": [SURE]}
    assert not any(k.startswith("gate.") for k in bundle.state_dict)
    assert bundle.gate["classifier.weight"].dtype == torch.int8
    with pytest.raises(ValueError, match="both its metadata and its tensors"):
        save_bundle(tmp_path / "x.safetensors", bundle.state_dict, dict(bundle.metadata))
    no_meta = {k: v for k, v in bundle.metadata.items() if k != "gate"}
    with pytest.raises(ValueError, match="both its metadata and its tensors"):
        save_bundle(tmp_path / "x.safetensors", bundle.state_dict, no_meta, bundle.gate)


def test_photos_get_the_gates_say_and_thumbnails_do_not(tmp_path):
    calibration = {"temperature": 1.0, "threshold": 0.5}
    tiny = {"calibration": calibration}
    mapped = Predictor.load(gated_bundle(tmp_path / "a.safetensors", {"dog": [SURE]}, **tiny))
    other = gated_bundle(tmp_path / "b.safetensors", {"dog": [SURE + 1]}, **tiny)
    elsewhere = Predictor.load(other)
    plain = Predictor.load(make_tiny_bundle(tmp_path / "c.safetensors", classes=CLASSES, **tiny))
    big, thumb = photo(300), photo(32)

    # ImageNet is sure it is one of the classes, and which: the product picks dog, sure of it
    [row] = mapped.predict(big, top_k=1)
    assert row[0][0] == "dog" and row[0][1] > 0.99
    logits = mapped.calibrated_logits(mapped.preprocess([big]))
    verdict = mapped.verdict(logits, [big])
    assert not verdict.outside[0] and not verdict.unsure[0]
    # ImageNet is sure it is none of them: "not one of its classes"
    assert elsewhere.verdict(logits, [big]).outside[0]
    # a thumbnail is the model's alone: the same answer as the bundle without a gate
    small = mapped.preprocess([thumb])
    assert not mapped.verdict(mapped.calibrated_logits(small), [thumb]).outside[0]
    np.testing.assert_allclose(
        mapped.predict_proba(small), plain.predict_proba(plain.preprocess([thumb])), atol=1e-6
    )
    assert mapped.predict(thumb, top_k=3) == plain.predict(thumb, top_k=3)


def test_the_api_and_predict_say_outside_from_the_gate(tmp_path, capsys):
    from imageclf.web import create_app

    path = gated_bundle(tmp_path / "g.safetensors", {"dog": [SURE + 1]})
    app = create_app(path, TESTING=True, IMAGECLF_MODEL_LOADING="eager")
    answer = post(app.test_client(), jpeg(photo(300)), "photo.jpg").get_json()
    assert answer["predictions"][0]["outside"] is True
    thumb = post(app.test_client(), jpeg(photo(32)), "thumb.jpg").get_json()
    assert thumb["predictions"][0]["outside"] is False
    gate = app.test_client().get("/api/v1/model").get_json()["gate"]
    assert gate == {"network": "efficientnet-lite0", "side": 160, "min_side": 80,
                    "outside_below": 0.25, "imagenet_classes": 1}  # fmt: skip
    assert answer["model"]["gate"] == gate
    # the page says why: the gate's share on its classes, not familiarity
    page = app.test_client().post(
        "/predict", data={"file": (io.BytesIO(jpeg(photo(300))), "p.jpg")}
    )
    text = " ".join(page.get_data(as_text=True).split())
    assert 'id="outside"' in text
    assert "puts only less than 1% of its belief on these classes" in text

    (tmp_path / "photo.jpg").write_bytes(jpeg(photo(300)))
    code, out, err = run_cli(["predict", str(path), str(tmp_path / "photo.jpg"), "--format",
                              "json"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["outside"] is True


def test_fp16_export_keeps_the_gate_and_onnx_metadata_leaves_it(tmp_path):
    from imageclf.prediction.export import export_half, onnx_metadata

    path = gated_bundle(tmp_path / "g.safetensors", {"dog": [SURE]})
    export_half(path, tmp_path / "half.safetensors")
    half = load_bundle(tmp_path / "half.safetensors")
    original = load_bundle(path)
    assert half.metadata["gate"] == original.metadata["gate"]
    assert all(torch.equal(half.gate[k], v) for k, v in original.gate.items())
    props = onnx_metadata(original.metadata)
    assert "gate" not in json.loads(props["imageclf"])


def test_info_names_the_gate(tmp_path, capsys):
    path = gated_bundle(tmp_path / "g.safetensors", {"dog": [SURE], "cat": [1, 2]})
    code, out, err = run_cli(["info", str(path)], capsys)
    assert code == 0, err
    assert "gate         efficientnet-lite0 ImageNet network at 160 px" in out
    assert "3 ImageNet classes are its classes" in out


def test_gate_command_adds_imagenets_network(tmp_path, capsys):
    require_pretrained_extra()
    from imageclf.data.cifar import CIFAR10_CLASSES

    model = make_tiny_bundle(tmp_path / "m.safetensors", classes=list(CIFAR10_CLASSES))
    out = tmp_path / "gated.safetensors"
    code, printed, err = run_cli(["gate", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    assert "226 ImageNet classes stand for 10 of its 10 classes" in printed
    bundle = load_bundle(out)
    assert bundle.metadata["gate"]["outside_below"] == 0.25
    assert bundle.metadata["gate"]["groups"]["frog"] == [30, 31, 32]
    original = load_bundle(model).state_dict
    assert all(torch.equal(bundle.state_dict[k], v) for k, v in original.items())
    # the real ImageNet network: a plain grey photo is no CIFAR class
    predictor = Predictor.load(out)
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    logits = predictor.calibrated_logits(predictor.preprocess([grey]))
    assert predictor.verdict(logits, [grey]).outside[0]


def test_gate_command_errors_are_one_line(tmp_path, capsys):
    require_pretrained_extra()
    model = make_tiny_bundle(tmp_path / "m.safetensors", classes=CLASSES)
    out = str(tmp_path / "o.safetensors")
    code, _, err = run_cli(["gate", str(model), "--out", out], capsys)
    one_line_error(code, err, "not CIFAR-10's", "--map")
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"classes": {"yak": {"indices": [3]}}}))
    code, _, err = run_cli(["gate", str(model), "--out", out, "--map", str(bad)], capsys)
    one_line_error(code, err, "yak", "not a class")
    bad.write_text("{not json")
    code, _, err = run_cli(["gate", str(model), "--out", out, "--map", str(bad)], capsys)
    one_line_error(code, err, "--map")
    bad.write_text(json.dumps({"cat": [1]}))
    code, _, err = run_cli(["gate", str(model), "--out", out, "--map", str(bad)], capsys)
    one_line_error(code, err, "expected")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    ("familiar_above", "dog", "flagged"),
    [
        (-1e9, SURE + 1, 2 / 3),  # familiarity flags nothing; the gate both photos it sees
        (1e9, SURE, 1 / 3),  # familiarity flags all; the gate clears its photos: the thumbnail
    ],
)
def test_evaluate_others_says_what_the_app_says_of_photos(tmp_path, familiar_above, dog, flagged):
    from imageclf.evaluation.outside import measure_others

    calibration = {"temperature": 1.0, "threshold": 0.0, "familiar_above": familiar_above}
    path = gated_bundle(tmp_path / "g.safetensors", {"dog": [dog]}, calibration=calibration)
    predictor = Predictor.load(path)
    folder = tmp_path / "others"
    folder.mkdir()
    for index, side in enumerate((300, 200, 40)):  # two photos and a thumbnail
        photo(side).save(folder / f"{index}.png")
    inside = np.zeros((4, 32, 32, 3), np.uint8)
    found = measure_others([predictor], inside, np.zeros(4, int), folder, "test")
    assert found["outside_flagged"] == round(flagged, 4)
    assert "ImageNet gate" in found["note"]
    # each picture as the app judges it, one at a time: the same flags
    verdicts = [
        predictor.verdict(predictor.calibrated_logits(predictor.preprocess([f])), [f]).outside[0]
        for f in [Image.open(folder / f"{i}.png") for i in range(3)]
    ]
    assert np.mean(verdicts) == pytest.approx(flagged)


def test_gate_remove_gives_back_the_model_alone(tmp_path, capsys):
    path = gated_bundle(tmp_path / "g.safetensors", {"dog": [SURE]})
    out = tmp_path / "alone.safetensors"
    code, printed, err = run_cli(["gate", str(path), "--out", str(out), "--remove"], capsys)
    assert code == 0, err
    assert "the model alone" in printed
    alone, gated = load_bundle(out), load_bundle(path)
    assert not alone.gate and "gate" not in alone.metadata
    assert all(torch.equal(alone.state_dict[k], v) for k, v in gated.state_dict.items())
    code, _, err = run_cli(["gate", str(out), "--out", str(out), "--remove"], capsys)
    one_line_error(code, err, "has no gate to remove")


def test_a_photo_gets_the_same_verdict_from_the_traces_as_from_the_eager_pass(tmp_path):
    predictor = Predictor.load(gated_bundle(tmp_path / "gated.safetensors", {"dog": [SURE]}))
    pictures = [photo(300), photo(20)]  # a photo the gate sees, a thumbnail it does not
    batch = np.stack([predictor.prepare(p) for p in pictures])
    eager = predictor.judged(batch, pictures)  # the traces come on the second pass
    one = predictor.judged(batch[:1], pictures[:1])
    for _ in range(2):  # two pictures run the plain traces, one the fused ones (traced.py)
        two = predictor.judged(batch, pictures)
        one = predictor.judged(batch[:1], pictures[:1])
    assert predictor.gate.net.graph is not None and predictor.gate.net.single is not None
    np.testing.assert_allclose(two.probs, eager.probs, atol=1e-5)
    np.testing.assert_allclose(one.probs, eager.probs[:1], atol=1e-5)
    assert two.outside.tolist() == eager.outside.tolist() == [False, False]
    assert two.probs[0].argmax() == CLASSES.index("dog") and np.isnan(two.mass[1])
