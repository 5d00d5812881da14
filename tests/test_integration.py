"""End to end on the real data: train seed-a briefly, then predict with the bundle."""

import io
import tarfile

import pytest

from imageclf import Predictor
from imageclf.training.loop import train
from imageclf.training.resolve import resolve


@pytest.mark.slow
def test_seed_a_one_epoch_on_2000_images_then_predict(shared_archive, tmp_path):
    cfg = resolve(
        "seed-a", data=str(shared_archive), subset=2000, epochs=1, out=str(tmp_path / "run")
    )
    result = train(cfg, progress=False)
    assert result.metrics["epochs_run"] == 1
    # 2,000 images, one epoch: well above chance (10%), far from converged.
    assert result.metrics["test"]["accuracy"] > 0.2

    predictor = Predictor.load(result.bundle_path)
    with tarfile.open(shared_archive) as archive:
        member = next(m for m in archive if m.name.endswith(".jpg") and "/test/" in f"/{m.name}")
        data = archive.extractfile(member).read()
    (top,) = predictor.predict(io.BytesIO(data).getvalue(), top_k=3)
    assert len(top) == 3 and top[0][0] in predictor.classes
