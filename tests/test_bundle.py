import json
import struct

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle, png_bytes, run_cli
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from imageclf import Predictor
from imageclf.errors import BundleError
from imageclf.models import build
from imageclf.models.bundle import FORMAT, _digest, build_model, load_bundle, save_bundle


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
    assert bundle.metadata.classes == ["a", "b", "c"]
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


# ---------------------------------------------------------------- hostile metadata
# A valid digest proves only that nobody edited the file after it was written: these
# bundles are written with a correct digest around metadata a hostile writer chose.
DELETE = object()


def _write_raw(path, tensors: dict, metadata_json: str) -> None:
    header = {"imageclf": metadata_json, "digest": _digest(metadata_json, tensors)}
    path.write_bytes(st_save(tensors, metadata={**header, "format": FORMAT}))


def _hostile_bundle(path, key: str, value, architecture: str = "seed-a"):
    make_tiny_bundle(path, architecture)
    bundle = load_bundle(path)
    meta = json.loads(json.dumps(bundle.metadata))
    *parents, leaf = key.split(".")
    target = meta
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    _write_raw(path, bundle.state_dict, json.dumps(meta, sort_keys=True))
    return path


HOSTILE = [
    # (field, value, architecture, what the one-line error says)
    ("input_size", 0, "seed-a", "input_size must be an integer from 8 to 512, got 0"),
    ("input_size", "32", "seed-a", 'input_size must be an integer from 8 to 512, got "32"'),
    ("input_size", 32.0, "seed-a", "input_size must be an integer"),
    ("input_size", True, "seed-a", "input_size must be an integer"),
    ("input_size", -32, "seed-a", "input_size must be an integer"),
    ("input_size", 10**9, "fast", "input_size must be an integer"),
    ("input_size", None, "seed-a", "input_size must be an integer"),
    ("input_size", 8, "seed-a", "architecture seed-a cannot be built"),  # too small for it
    ("input_size", 64, "seed-a", "weights do not match architecture seed-a"),
    ("normalization", DELETE, "seed-a", "lacks metadata: normalization"),
    ("normalization.std", DELETE, "seed-a", "normalization.std must be 3 numbers"),
    ("normalization.mean", DELETE, "seed-a", "normalization.mean must be 3 numbers"),
    ("normalization.std", [0, 0, 0], "seed-a", "normalization.std must be 3 numbers"),
    ("normalization.std", [0.2, 0.2], "seed-a", "normalization.std must be 3 numbers"),
    ("normalization.mean", ["a", "b", "c"], "seed-a", "normalization.mean must be 3 numbers"),
    ("normalization", [0.5, 0.25], "seed-a", "normalization must be a JSON object"),
    ("classes", [], "seed-a", "classes must be a list of 2 to"),
    ("classes", "cat,dog", "seed-a", "classes must be a list of 2 to"),
    ("classes", [1, 2, 3], "seed-a", "every class name must be printable text"),
    ("classes", ["cat"] * 10, "seed-a", "class names must be unique"),
    ("classes", ["a\x1b[2Jb", *"cdefghijk"], "seed-a", "every class name must be printable"),
    ("classes", ["a", "b", "c"], "seed-a", "weights do not match architecture seed-a"),
    # 360 GB of weights if it were allocated: compared on the meta device, it never is.
    ("arch_kwargs", {"widths": [10**5] * 3}, "fast", "weights do not match architecture fast"),
    ("arch_kwargs", {"widths": [10**15] * 3}, "fast", "architecture fast cannot be built"),
    ("arch_kwargs", {"widths": [-4, 8, 8]}, "fast", "architecture fast cannot be built"),
    ("arch_kwargs", {"widths": "abc"}, "fast", "architecture fast cannot be built"),
    ("arch_kwargs", {"nonsense": 1}, "seed-a", "architecture seed-a cannot be built"),
    ("arch_kwargs", [64, 128], "fast", "arch_kwargs must be a JSON object"),
    ("architecture", 123, "seed-a", "architecture must be printable text"),
    ("architecture", "", "seed-a", "architecture must be printable text"),
    ("architecture", "x" * 5000, "seed-a", "architecture must be printable text"),
    ("architecture", DELETE, "seed-a", "lacks metadata: architecture"),
    ("name", {"a": 1}, "seed-a", "name must be printable text"),
    ("split", "official", "seed-a", "split must be an object"),
    ("split", {"name": "official", "seed": "0"}, "seed-a", "split must be an object"),
    ("data", "cifar", "seed-a", "data must be an object"),
    ("data", {"source": ["x"]}, "seed-a", "data.source must be a string"),
    ("metrics", [0.9], "seed-a", "metrics must be an object"),
    ("config", "fast", "seed-a", "config must be an object"),
    ("versions", "1.0", "seed-a", "versions must be an object"),
    # Sections that evaluate, info and the web app read are checked in depth at load.
    ("metrics", {"test": "x"}, "seed-a", "metrics.test must be an object"),
    ("metrics", {"test": {"accuracy": 2}}, "seed-a", "metrics.test.accuracy must be a number"),
    ("metrics", {"val": {"loss": "low"}}, "seed-a", "metrics.val.loss must be a number"),
    ("config", {"label_smoothing": "x"}, "seed-a", "config.label_smoothing must be"),
    ("config", {"val_size": -5}, "seed-a", "config.val_size must be"),
    ("config", {"subset": 2.5}, "seed-a", "config.subset must be"),
    (
        "split",
        {"name": "official", "seed": -1, "sizes": {}, "digest": ""},
        "seed-a",
        "integer seed from 0 to 2^32-1",
    ),
]


@pytest.mark.parametrize("key,value,architecture,needle", HOSTILE)
def test_hostile_metadata_is_one_bundle_error(tmp_path, key, value, architecture, needle):
    path = _hostile_bundle(tmp_path / "m.safetensors", key, value, architecture)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_metadata_that_is_not_an_object(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, {"w": torch.zeros(2)}, "[1, 2, 3]")
    with pytest.raises(BundleError, match="metadata is not a JSON object"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("metadata_json", "needle"),
    [
        ('{"metrics": {"test": {"accuracy": NaN}}}', "holds NaN, which is not a JSON number"),
        ('{"x": -Infinity}', "holds -Infinity, which is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' * 65 + "1" + "}" * 65, "nested too deeply"),
        ("{", "is not valid JSON"),
    ],
    ids=["nan", "infinity", "100k-levels", "65-levels", "syntax"],
)
def test_unparsable_or_non_json_metadata_is_one_bundle_error(tmp_path, metadata_json, needle):
    path = tmp_path / "m.safetensors"
    _write_raw(path, {"w": torch.zeros(2)}, metadata_json)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_save_writes_nan_metrics_as_null_so_the_bundle_loads(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors", "seed-a")
    bundle = load_bundle(path)
    meta = {**bundle.metadata, "metrics": {"val": {"loss": float("nan"), "accuracy": 0.5}}}
    meta["extra"] = [float("inf"), 1.0]
    save_bundle(path, bundle.state_dict, meta)
    again = load_bundle(path).metadata
    assert again.metrics["val"] == {"loss": None, "accuracy": 0.5}
    assert again["extra"] == [None, 1.0]


def _cli(argv, capsys):
    """``imageclf -q ...``: (exit code, stdout, stderr)."""
    return run_cli(["-q", *argv], capsys)


# A sample of HOSTILE (each field kind once) through every command that opens a bundle.
CLI_CASES = [HOSTILE[i] for i in (0, 1, 5, 9, 10, 16, 22, 25, 33, 35, 40, 43)]


@pytest.mark.parametrize("key,value,architecture,needle", CLI_CASES)
def test_info_predict_and_serve_refuse_hostile_bundles(
    tmp_path, capsys, keep_torch_threads, key, value, architecture, needle
):
    path = _hostile_bundle(tmp_path / "m.safetensors", key, value, architecture)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    for argv in (
        ["info", str(path)],
        ["info", "--json", str(path)],
        ["predict", str(path), str(image)],
        ["serve", "--model", str(path), "--port", "0"],  # refuses before any worker starts
    ):
        code, out, err = _cli(argv, capsys)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, argv
        assert out == "", argv


def test_unknown_architecture_loads_for_info_but_not_for_predicting(tmp_path, capsys):
    """A bundle of an architecture this installation lacks (an optional extra) can still
    be inspected; predicting with it is one clear line."""
    path = _hostile_bundle(tmp_path / "m.safetensors", "architecture", "resnet9000")
    code, out, _ = _cli(["info", str(path)], capsys)
    assert code == 0 and "resnet9000" in out
    code, _, err = _cli(["predict", str(path), str(tmp_path)], capsys)
    assert code == 2 and "unknown architecture 'resnet9000'" in err
    assert len(err.strip().splitlines()) == 1


def test_typed_accessors(tiny_bundle):
    meta = load_bundle(tiny_bundle).metadata
    assert meta.input_size == 32 and meta.architecture == "seed-a"
    assert meta.mean == [0.5, 0.5, 0.5] and meta.std == [0.25, 0.25, 0.25]
    assert meta.test_accuracy == 0.1 and meta.name == "tiny-seed-a"
    # Optional sections read as empty, never as KeyError or None-chains.
    assert meta.config == {} and meta.split is None and meta.data_source is None
    assert meta.recipe is None and meta.data_fingerprint is None


def test_save_refuses_metadata_it_could_not_load(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        save_bundle(
            tmp_path / "m.safetensors",
            {"w": torch.zeros(1)},
            {
                "architecture": "seed-a",
                "arch_kwargs": {},
                "classes": ["a", "b"],
                "input_size": 0,
                "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
            },
        )
