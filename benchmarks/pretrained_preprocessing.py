"""Which preprocessing the EfficientNet-Lite0 ImageNet weights expect, measured on real photos.

    python benchmarks/pretrained_preprocessing.py   # needs imageclf[pretrained] and scikit-image

Eight real photos ship inside scikit-image and scikit-learn (a cat, an espresso, a
rocket, a motorbike, a temple, a flower...). For every combination of resize policy
(squash the whole frame / centre crop 87.5% of the short side), normalisation
((x - 127) / 128 / ImageNet mean and std) and padding (TensorFlow SAME / symmetric),
the table gives how many photos get an acceptable ImageNet class top-1 and top-5, and
the mean probability the model puts on the acceptable classes.

A second check needs no labels: the first BatchNorm layer stores the mean and variance
its input had during ImageNet training. Feeding the photos through the stem conv under
each normalisation, the one whose activation statistics match the stored ones is the
one the weights were trained with.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe

from imageclf.imaging import resize_for_model
from imageclf.models import efficientnet as E

# photo -> ImageNet classes a person would accept for it
PHOTOS = {
    "skimage:chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "skimage:coffee.png": {"espresso", "cup", "coffee mug"},
    "skimage:rocket.jpg": {"missile", "projectile", "space shuttle"},
    "skimage:motorcycle_left.png": {"moped", "motor scooter"},
    "skimage:astronaut.png": {"space shuttle", "military uniform", "suit"},
    "sklearn:china.jpg": {"palace", "monastery", "bell cote", "church", "stupa", "dome"},
    "sklearn:flower.jpg": {"daisy"},
}


def load_photo(name: str) -> np.ndarray:
    package, file = name.split(":")
    folder = {"skimage": "skimage.data", "sklearn": "sklearn.datasets.images"}[package]
    with Image.open(resources.files(folder) / file) as image:
        return np.asarray(image.convert("RGB"))


def squash(a: np.ndarray) -> np.ndarray:
    return resize_for_model(Image.fromarray(a), E.INPUT_SIZE)


def center_crop(a: np.ndarray, fraction: float = 0.875) -> np.ndarray:
    h, w = a.shape[:2]
    side = int(min(h, w) * fraction)
    top, left = (h - side) // 2, (w - side) // 2
    return squash(a[top : top + side, left : left + side])


NORMS = {
    "(x-127)/128": (127.0, 128.0),
    "ImageNet mean/std": (
        np.array([0.485, 0.456, 0.406]) * 255,
        np.array([0.229, 0.224, 0.225]) * 255,
    ),
}


def symmetric_forward(self, x):
    k = self.kernel_size[0]
    return F.conv2d(x, self.weight, None, self.stride, k // 2, 1, self.groups)


def stem_statistics(model, photos: list[np.ndarray]) -> list[dict]:
    """How far the stem's activation statistics are from the stored BatchNorm ones."""
    bn = model.stem[1]
    used = bn.running_var > 1e-6  # channels that never fire have no statistics to compare
    rows = []
    for norm_name, (mean, std) in NORMS.items():
        x = (np.stack([center_crop(p) for p in photos]).astype(np.float32) - mean) / std
        with torch.inference_mode():
            y = model.stem[0](torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2))
        m, v = y.mean((0, 2, 3))[used], y.var((0, 2, 3))[used]
        rm, rv = bn.running_mean[used], bn.running_var[used]
        rows.append(
            {
                "normalization": norm_name,
                "mean_gap_in_std": round(float(((m - rm) / rv.sqrt()).abs().mean()), 3),
                "abs_log_var_ratio": round(float((v.log() - rv.log()).abs().mean()), 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/pretrained_preprocessing.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = E.pretrained().eval()
    names = E.imagenet_classes()
    photos = {n: load_photo(n) for n in PHOTOS}
    rows = []
    same_forward = E.SameConv2d.forward
    for padding in ("TF SAME", "symmetric"):
        E.SameConv2d.forward = same_forward if padding == "TF SAME" else symmetric_forward
        for resize_name, resize in (("squash", squash), ("centre crop 87.5%", center_crop)):
            for norm_name, (mean, std) in NORMS.items():
                top1 = top5 = 0
                mass = []
                for photo, accepted in PHOTOS.items():
                    x = (resize(photos[photo]).astype(np.float32) - mean) / std
                    x = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
                    with torch.inference_mode():
                        probs = model(x).softmax(1)[0]
                    order = probs.argsort(descending=True)[:5].tolist()
                    top1 += names[order[0]] in accepted
                    top5 += any(names[i] in accepted for i in order)
                    mass.append(sum(float(probs[names.index(c)]) for c in accepted))
                rows.append(
                    {
                        "padding": padding,
                        "resize": resize_name,
                        "normalization": norm_name,
                        "top1": top1,
                        "top5": top5,
                        "photos": len(PHOTOS),
                        "mean_prob_on_accepted": round(float(np.mean(mass)), 3),
                    }
                )
    E.SameConv2d.forward = same_forward
    print(f"{'padding':<10} {'resize':<18} {'normalization':<18} top-1  top-5  P(accepted)")
    for r in rows:
        print(
            f"{r['padding']:<10} {r['resize']:<18} {r['normalization']:<18} "
            f"{r['top1']}/{r['photos']}    {r['top5']}/{r['photos']}    "
            f"{r['mean_prob_on_accepted']:.3f}"
        )
    stats = stem_statistics(model, list(photos.values()))
    print("\nstem activations vs the stored BatchNorm statistics (0 = identical)")
    print(f"{'normalization':<18} |mean gap| in std  |log variance ratio|")
    for r in stats:
        print(f"{r['normalization']:<18} {r['mean_gap_in_std']:<17} {r['abs_log_var_ratio']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": describe(), "rows": rows, "stem_statistics": stats}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
