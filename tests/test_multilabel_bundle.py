"""The multi-label part of a bundle's metadata: its schema (one BundleError line for a
bad section, at load; a ValueError at save) and the accessors Predictor reads."""

import json

import pytest
from helpers import make_tiny_bundle, make_tiny_multilabel_bundle
from safetensors.torch import save as st_save

from imageclf.errors import BundleError
from imageclf.models.bundle import FORMAT, _digest, load_bundle, save_bundle

CALIBRATION = {"method": "platt", "scale": [1.0, 2.0, 0.5, 1.0], "bias": [0.0, -1.0, 0.5, 0.0]}


def test_accessors_of_a_multilabel_bundle(tmp_path):
    path = make_tiny_multilabel_bundle(
        tmp_path / "m.safetensors", thresholds=[0.3, 0.5, 0.7, 0.9], calibration=CALIBRATION
    )
    meta = load_bundle(path).metadata
    assert meta.multi_label and meta["task"] == "multi_label"
    assert meta.label_thresholds == [0.3, 0.5, 0.7, 0.9]
    calibration = meta.label_calibration
    assert calibration.method == "platt" and calibration.scale == (1.0, 2.0, 0.5, 1.0)
    assert calibration.bias == (0.0, -1.0, 0.5, 0.0)


def test_calibration_is_optional_and_single_label_has_no_labels_section(tmp_path):
    meta = load_bundle(make_tiny_multilabel_bundle(tmp_path / "m.safetensors")).metadata
    assert meta.label_calibration.scale == (1.0,) * 4 and meta.label_calibration.bias == (0.0,) * 4
    single = load_bundle(make_tiny_bundle(tmp_path / "s.safetensors")).metadata
    assert not single.multi_label
    assert single.label_thresholds is None and single.label_calibration is None


def _write_with(path, **changes):
    """A multi-label bundle whose metadata a hostile writer changed (digest still valid)."""
    make_tiny_multilabel_bundle(path, calibration=CALIBRATION)
    bundle = load_bundle(path)
    meta = json.loads(json.dumps(bundle.metadata))
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = meta
        for part in parents:
            target = target[part]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    meta_json = json.dumps(meta, sort_keys=True)
    header = {"imageclf": meta_json, "digest": _digest(meta_json, bundle.state_dict)}
    path.write_bytes(st_save(bundle.state_dict, metadata={**header, "format": FORMAT}))
    return path


BAD = [
    ({"task": "regression"}, "task must be one of single_label, multi_label"),
    ({"task": None}, 'multi_label is only allowed with "task": "multi_label"'),
    ({"multi_label": None}, "needs a multi_label object"),
    ({"multi_label": [0.5] * 4}, "needs a multi_label object"),
    ({"multi_label__thresholds": [0.5] * 3}, "multi_label.thresholds must be 4 numbers"),
    ({"multi_label__thresholds": [0.5, 0.5, 0.5, 1.0]}, "between 0 and 1"),
    ({"multi_label__thresholds": [0.5, 0.5, 0.5, 0]}, "between 0 and 1"),
    ({"multi_label__thresholds": [0.5, 0.5, 0.5, "x"]}, "between 0 and 1"),
    ({"multi_label__thresholds": None}, "multi_label.thresholds must be 4 numbers"),
    ({"multi_label__calibration": "platt"}, "multi_label.calibration must be an object"),
    ({"multi_label__calibration__method": "isotonic"}, "method must be one of platt, tempera"),
    ({"multi_label__calibration__scale": [1.0] * 5}, "calibration.scale must be 4 finite"),
    ({"multi_label__calibration__bias": [0, 0, 0, True]}, "calibration.bias must be 4 finite"),
    ({"multi_label__calibration__bias": None}, "calibration.bias must be 4 finite"),
]


@pytest.mark.parametrize("changes,needle", BAD)
def test_bad_multilabel_section_is_one_bundle_error(tmp_path, changes, needle):
    path = _write_with(tmp_path / "m.safetensors", **changes)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_save_refuses_a_bad_section(tmp_path):
    bundle = load_bundle(make_tiny_multilabel_bundle(tmp_path / "m.safetensors"))
    meta = {**bundle.metadata, "multi_label": {"thresholds": [0.5, float("nan"), 0.5, 0.5]}}
    with pytest.raises(ValueError, match=r"multi_label\.thresholds"):
        save_bundle(tmp_path / "n.safetensors", bundle.state_dict, meta)


def test_info_says_the_task_and_thresholds(tmp_path, capsys):
    from helpers import run_cli

    path = make_tiny_multilabel_bundle(
        tmp_path / "m.safetensors", thresholds=[0.3, 0.5, 0.7, 0.9], calibration=CALIBRATION
    )
    code, out, _ = run_cli(["info", str(path)], capsys)
    assert code == 0
    assert (
        "task         multi-label (calibration: platt); thresholds label0 0.3, label1 0.5, "
        "label2 0.7, label3 0.9"
    ) in out
