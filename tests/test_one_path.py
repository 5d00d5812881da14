"""Issue 26: the server's probabilities for a large photo differed from Predictor's and
the CLI's (cat 0.646 vs 0.665): the server reduced the picture while decoding, the others
did not. Every caller now decodes through ``Predictor.decode``'s one rule."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_tiny_bundle
from PIL import Image

from imageclf import Predictor
from imageclf.cli import cli
from imageclf.web import create_app


def big_photo(path) -> bytes:
    """A 2400x1800 JPEG with detail at every scale (so any resizing difference shows)."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((2400, 1800), Image.Resampling.BICUBIC)
    noise = rng.integers(-40, 40, (1800, 2400, 3))
    image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.mark.parametrize("architecture", ["seed-a"])
def test_server_cli_and_predictor_agree_on_a_large_photo(tmp_path, architecture):
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", architecture)
    photo = tmp_path / "big.jpg"
    data = big_photo(photo)
    predictor = Predictor.load(bundle)
    expected = predictor.predict(photo, top_k=10)[0]

    client = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager").test_client()
    answer = client.post(
        "/api/v1/predict", data={"file": (io.BytesIO(data), "big.jpg"), "top_k": "10"}
    ).get_json()
    served = [(t["label"], t["probability"]) for t in answer["predictions"][0]["top"]]

    result = CliRunner().invoke(
        cli, ["predict", str(bundle), str(photo), "--top-k", "10", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)[0]
    from_cli = [(t["label"], t["probability"]) for t in printed["predictions"]]

    for other in (served, from_cli, predictor.predict(data, top_k=10)[0]):
        assert [label for label, _ in other] == [label for label, _ in expected]
        np.testing.assert_allclose([p for _, p in other], [p for _, p in expected], atol=1e-6)
