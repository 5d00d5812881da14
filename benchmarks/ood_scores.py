"""Which out-of-class score tells real photos of other things from photos of the classes?

    python benchmarks/ood_scores.py [--model PATH] --data ../shared/data/cifar10-jpeg.tar.gz
        --photos ../shared/data/realphotos-dev

Each score's threshold is set on the model's own validation split (CIFAR pictures, so no
out-of-class pictures are needed to choose it) to flag 2, 5, 10 or 15% of them; the table
then says how many right answers, mistakes and out-of-class photos of ``--photos`` it
flags. Scores: max softmax probability (what the app uses), energy (logsumexp of the
logits), Mahalanobis distance to the nearest class mean of the penultimate features
(shared covariance, from 10,000 training pictures) and mean cosine similarity to the 10
nearest training features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe

from imageclf.data import load_dataset, make_split
from imageclf.prediction.files import collect_images
from imageclf.prediction.predictor import Predictor

RATES = (0.02, 0.05, 0.10, 0.15)


@torch.no_grad()
def features(predictor: Predictor, images: np.ndarray) -> torch.Tensor:
    model, normalizer = predictor.model, predictor.engine.normalizer
    out = []
    for start in range(0, len(images), 128):
        x = normalizer(torch.from_numpy(np.ascontiguousarray(images[start : start + 128])))
        out.append(model.forward_features(x).float())
    return torch.cat(out).double()


def scorers(predictor: Predictor, train_f: torch.Tensor, train_y: torch.Tensor):
    """Score functions, higher = more out-of-class; and the predicted class."""
    head = predictor.model.classifier
    w, b = head.weight.detach().double(), head.bias.detach().double()
    means = torch.stack([train_f[train_y == c].mean(0) for c in range(len(w))])
    centred = train_f - means[train_y]
    cov = centred.T @ centred / len(train_f)
    precision = torch.linalg.inv(cov + 1e-3 * cov.diagonal().mean() * torch.eye(len(cov)))
    unit_train = F.normalize(train_f, dim=1)

    def score(f: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        z = (f @ w.T + b) / predictor.temperature
        dist = torch.stack([((f - m) @ precision * (f - m)).sum(1) for m in means], 1)
        knn = (F.normalize(f, dim=1) @ unit_train.T).topk(10, dim=1).values.mean(1)
        found = {
            "max softmax": -torch.softmax(z, 1).max(1).values,
            "energy": -torch.logsumexp(z, 1),
            "Mahalanobis": dist.min(1).values,
            "kNN cosine": -knn,
        }
        return {k: v.numpy() for k, v in found.items()}, z.argmax(1).numpy()

    return score


def photos(root: Path, predictor: Predictor) -> tuple[np.ndarray, list[str]]:
    files, _ = collect_images([root])
    return predictor.preprocess(files), [f.parent.name for f in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", required=True, help="the model's training data")
    parser.add_argument("--photos", type=Path, required=True, help="DIR with classes/, others/")
    parser.add_argument("--out", default="benchmarks/results/ood_scores.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    predictor = Predictor.load(args.model)
    meta = predictor.metadata
    ds = load_dataset(args.data, image_size=predictor.input_size, progress=False)
    recorded = meta.split
    split = make_split(ds, recorded["name"], recorded["seed"], meta.config.get("val_size"))
    train = np.sort(np.random.default_rng(0).choice(split.train, 10000, replace=False))
    score = scorers(predictor, features(predictor, ds.images[train]),
                    torch.from_numpy(ds.labels[train]))  # fmt: skip
    val, _ = score(features(predictor, ds.images[split.val]))
    inside_x, truth = photos(args.photos / "classes", predictor)
    inside, predicted = score(features(predictor, inside_x))
    outside, _ = score(features(predictor, photos(args.photos / "others", predictor)[0]))
    right = np.array([predictor.classes[p] == t for p, t in zip(predicted, truth, strict=True)])
    rows = []
    for name in val:
        for rate in RATES:
            cut = np.quantile(val[name], 1 - rate)
            rows.append({
                "score": name, "val_flagged": rate,
                "right_flagged": round(float((inside[name][right] > cut).mean()), 3),
                "wrong_flagged": round(float((inside[name][~right] > cut).mean()), 3),
                "others_flagged": round(float((outside[name] > cut).mean()), 3),
            })  # fmt: skip
    print("| score | val flagged | right answers flagged | mistakes flagged | others flagged |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['score']} | {r['val_flagged']:.0%} | {r['right_flagged']:.1%} | "
              f"{r['wrong_flagged']:.1%} | {r['others_flagged']:.1%} |")  # fmt: skip
    result = {"machine": describe(), "date": time.strftime("%Y-%m-%d"), "model": meta.name,
              "photos": str(args.photos), "real_accuracy": round(float(right.mean()), 4),
              "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
