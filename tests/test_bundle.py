import json
import struct

import numpy as np
import pytest
import torch
from conftest import make_tiny_bundle, png_bytes
from safetensors.torch import save_file

from imageclf import Predictor
from imageclf.bundle import build_model, load_bundle, save_bundle
from imageclf.errors import BundleError
from imageclf.models import build


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build("seed-b", num_classes=3, input_size=32)
    model(torch.randn(8, 3, 32, 32))  # train mode: BatchNorm's running stats move off 0/1
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    metadata = {
        "architecture": "seed-b",
        "arch_kwargs": {},
        "classes": ["a", "b", "c"],
        "input_size": 32,
        "normalization": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
        "metrics": {"test": {"accuracy": 0.5}},
    }
    path = save_bundle(tmp_path / "m.safetensors", model.state_dict(), metadata)
    bundle = load_bundle(path)
    # Every saved tensor comes back bit for bit, with nothing missing or added.
    assert bundle.state_dict.keys() == saved.keys()
    for key, tensor in saved.items():
        assert torch.equal(bundle.state_dict[key], tensor), key
        assert bundle.state_dict[key].dtype == tensor.dtype
    assert {k: bundle.metadata[k] for k in metadata} == metadata
    assert bundle.metadata["versions"]["torch"] == torch.__version__
    # The rebuilt model computes what the saved one did (BatchNorm buffers included).
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(build_model(bundle)(x), model.eval()(x), rtol=0, atol=0)


def _tensor_region(path):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    return data, 8 + header_len


def test_flipped_weight_byte_is_detected(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data, start = _tensor_region(path)
    tampered = bytearray(data)
    tampered[start + 100] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(BundleError, match=r"modified|corrupt"):
        load_bundle(path)


def test_edited_metadata_is_detected(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data = path.read_bytes()
    edited = data.replace(b"class0", b"classX", 1)
    assert edited != data
    path.write_bytes(edited)
    with pytest.raises(BundleError, match=r"modified|corrupt"):
        load_bundle(path)


@pytest.mark.parametrize("keep", [0.0, 0.003, 0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BundleError):
        load_bundle(path)


def test_foreign_safetensors_and_garbage(tmp_path):
    save_file({"w": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(BundleError, match="not an imageclf"):
        load_bundle(tmp_path / "other.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "pickle.pt")
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.safetensors")


def test_predictor_api(tiny_bundle, tmp_path):
    p = Predictor.load(tiny_bundle)
    assert p.classes == [f"class{i}" for i in range(10)]
    img_path = tmp_path / "x.png"
    img_path.write_bytes(png_bytes((10, 200, 10), size=(64, 40)))
    from PIL import Image

    results = p.predict([img_path, png_bytes(), Image.open(img_path)], top_k=3)
    assert len(results) == 3
    for top in results:
        assert len(top) == 3 and top[0][0] in p.classes
        probs = [prob for _, prob in top]
        assert probs == sorted(probs, reverse=True)
    assert results[0] == results[2]  # path and PIL image of the same file agree
    single = p.predict(png_bytes(), top_k=20)
    assert len(single) == 1 and len(single[0]) == 10
    assert abs(sum(prob for _, prob in single[0]) - 1) < 1e-5
    full = p.predict_proba(p.preprocess([png_bytes()]))
    assert full.shape == (1, 10) and np.isclose(full.sum(), 1, atol=1e-5)


def test_metadata_is_json(tmp_path):
    """The metadata is stored as JSON text in the safetensors header, readable without
    imageclf, and survives a JSON round trip unchanged (no Python-only values)."""
    path = make_tiny_bundle(tmp_path / "m.safetensors", classes=["a", "b"])
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])["__metadata__"]
    stored = json.loads(header["imageclf"])
    loaded = load_bundle(path).metadata
    assert stored == loaded == json.loads(json.dumps(loaded))
    assert stored["classes"] == ["a", "b"] and stored["format"] == header["format"]
