"""A model fine-tuned on 32 px thumbnails enlarged to 96 px has learnt blurry pictures:
fed a sharp 96 px photo it scored 70% on real photos, fed the photo reduced to 32 px and
enlarged like its training data 86% (docs/benchmarks.md). The bundle records that
``source_size``, and every served picture takes the same two steps."""

import io

import numpy as np
import pytest
from helpers import make_tiny_bundle
from PIL import Image

from imageclf import Predictor
from imageclf.errors import BundleError, UserInputError
from imageclf.imaging import resize_for_model
from imageclf.models.bundle import load_bundle, save_bundle
from imageclf.training.config import TrainConfig
from imageclf.training.finish import _preprocessing


def _photo(size=(200, 150)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _two_steps(picture: Image.Image, source: int, size: int) -> np.ndarray:
    small = picture.resize((source, source), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))


def test_resize_reduces_to_the_source_size_first():
    photo = _photo()
    assert np.array_equal(resize_for_model(photo, 96, 32), _two_steps(photo, 32, 96))
    # Without it (or when it is not smaller), one step: sharper, and different.
    assert not np.array_equal(resize_for_model(photo, 96), _two_steps(photo, 32, 96))
    assert np.array_equal(resize_for_model(photo, 32, 32), resize_for_model(photo, 32))


def _with_source(tmp_path, source):
    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny.safetensors"))
    meta = dict(bundle.metadata)
    meta["input_size"] = 32
    meta["preprocessing"] = {"source_size": source}
    path = tmp_path / f"source-{source}.safetensors"
    save_bundle(path, bundle.state_dict, meta)
    return path


def test_every_served_picture_takes_the_bundles_two_steps(tmp_path):
    predictor = Predictor.load(_with_source(tmp_path, 8))
    assert predictor.metadata.source_size == 8
    photo = _photo()
    expected = _two_steps(photo, 8, 32)
    assert np.array_equal(predictor.prepare(photo), expected)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    assert np.array_equal(predictor.preprocess(buffer.getvalue())[0], expected)


@pytest.mark.parametrize("source", [33, 4, "32", 8.0])
def test_a_source_size_the_input_cannot_hold_is_refused(tmp_path, source):
    with pytest.raises((ValueError, BundleError), match="source_size"):
        _with_source(tmp_path, source)


def test_training_records_it_only_when_pictures_are_enlarged():
    assert _preprocessing(TrainConfig(image_size=96, source_size=32))["source_size"] == 32
    assert "source_size" not in _preprocessing(TrainConfig(image_size=32, source_size=32))
    assert "source_size" not in _preprocessing(TrainConfig(image_size=96))
    with pytest.raises(UserInputError, match="source_size"):
        TrainConfig(source_size=2)
