"""How the gate's votes and the model's probabilities are combined: which rule, measured twice.

    python benchmarks/gate_rules.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --photos DEV/classes --others DEV/others [--model PATH] [--test-every 5]

(``DEV`` = ``../shared/data/realphotos-dev``; ``--model`` a bundle with a gate, by default
the bundled one.) Nothing is trained or chosen here: the bundle's gate and map as shipped.

The rules, each applied to the same probabilities and votes:

- the model alone (no gate);
- the plain product: probabilities times votes, renormalised (the rule before);
- the product over ImageNet's prior (``gate.combine``, served): each vote divided by its
  class's share of ImageNet's classes first, as Bayes' rule for two opinions asks.

Measured on two sets: realphotos-dev's class photos as uploads arrive (what the gate is
for; a development set, so a rule kept for it alone would be tuned to it), and a second
set no rule was looked at on: every ``--test-every``-th picture of the mirror's test
split, which the served app never gates (thumbnails), enlarged to the gate's side, so
the rule meets the gate's mistakes on pictures unlike the ones it was written for.
Out-of-class photos are flagged by the gate's mass alone, which no rule here changes;
their "not sure" from the rule's probabilities is reported beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from real_photos import dev_set_arguments, dev_set_files

from imageclf.data import load_dataset
from imageclf.data.dataset import TEST
from imageclf.imaging import picture_from_array
from imageclf.prediction.gate import Gate, combine
from imageclf.prediction.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
ALONE = "model alone"
RULES: dict[str, Rule] = {
    ALONE: lambda probs, votes, prior: probs,
    # a constant prior cancels in the renormalisation: the plain product
    "plain product": lambda probs, votes, prior: combine(probs, votes, np.zeros_like(prior)),
    "product over ImageNet's prior (served)": combine,
}
BATCH = 64


def score(probs: np.ndarray, truth: np.ndarray, classes: list[str], unsure_below: float) -> dict:
    """Accuracy, per class and its worst, and the right answers under ``unsure_below``."""
    right = probs.argmax(1) == truth
    shown = [i for i in range(len(classes)) if (truth == i).any()]
    per_class = {c: float("nan") for c in classes}
    per_class.update({classes[i]: float(right[truth == i].mean()) for i in shown})
    return {
        "accuracy": float(right.mean()),
        "worst_class": min(per_class[classes[i]] for i in shown),
        "per_class": per_class,
        "right_not_sure": float((probs.max(1) < unsure_below)[right].mean()),
    }


def passes(model: Predictor, gate: Gate, pictures: list) -> tuple[np.ndarray, np.ndarray]:
    """The model's calibrated probabilities (as served) and the gate's votes."""
    probs, votes = [], []
    for start in range(0, len(pictures), BATCH):
        chunk = pictures[start : start + BATCH]
        probs.append(model.predict_proba(np.stack([model.prepare(p) for p in chunk])))
        votes.append(gate.votes(chunk))
    return np.concatenate(probs), np.concatenate(votes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dev_set_arguments(parser, "the CIFAR-10 archive (its test split is the second set)")
    parser.add_argument("--test-every", type=int, default=5, help="every Nth test picture")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gate_rules.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    model = Predictor.load(args.model)
    gate, classes = model.gate, model.classes
    if gate is None:
        parser.error(f"{args.model} has no gate (imageclf gate adds one)")
    files, photo_truth, others = dev_set_files(args.photos, args.others, classes)
    photo_probs, photo_votes = passes(model, gate, [model.decode(f) for f in files])
    other_probs, other_votes = passes(model, gate, [model.decode(f) for f in others])
    outside = gate.outside(other_votes)

    data = load_dataset(args.data, image_size=32, progress=False)
    test = np.flatnonzero(data.partition == TEST)[:: args.test_every]
    thumbs = [picture_from_array(data.images[i]) for i in test]
    thumb_probs, thumb_votes = passes(model, gate, thumbs)
    thumb_truth = np.asarray(data.labels[test])

    rows = []
    for name, rule in RULES.items():
        others_unsure = rule(other_probs, other_votes, gate.prior).max(1) < model.unsure_below
        rows.append(
            {
                "rule": name,
                "photos": score(
                    rule(photo_probs, photo_votes, gate.prior),
                    photo_truth,
                    classes,
                    model.unsure_below,
                ),
                "thumbnails": score(
                    rule(thumb_probs, thumb_votes, gate.prior),
                    thumb_truth,
                    classes,
                    model.unsure_below,
                ),
                "others_not_sure": float(others_unsure.mean()),
                "others_doubted": float((others_unsure | (outside & (name != ALONE))).mean()),
            }
        )
    write_result(
        args.out,
        rows,
        load_before,
        model=str(args.model),
        photos=len(files),
        others=len(others),
        thumbnails=len(test),
        prior=dict(zip(classes, gate.prior.round(4).tolist(), strict=True)),
    )
    print(f"{len(files)} photos, {len(others)} others, {len(test)} test thumbnails enlarged")
    print("| rule | photos | worst class | right, not sure | others doubted | thumbnails |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ph, th = row["photos"], row["thumbnails"]
        print(
            f"| {row['rule']} | {ph['accuracy']:.1%} | {ph['worst_class']:.1%} | "
            f"{ph['right_not_sure']:.1%} | {row['others_doubted']:.1%} | {th['accuracy']:.2%} |"
        )
    print("per class on the photos:")
    for row in rows:
        cells = " ".join(f"{c} {v:.0%}" for c, v in row["photos"]["per_class"].items())
        print(f"  {row['rule']}: {cells}")


if __name__ == "__main__":
    main()
