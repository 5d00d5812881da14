"""Can the ImageNet classifier the bundled model was fine-tuned from say "none of its classes"?

    python benchmarks/imagenet_gate.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --photos DEV/classes --others DEV/others [--model PATH] [--sides 128,160,224]

(``DEV`` = ``../shared/data/realphotos-dev``; needs the ``pretrained`` extra.)

The fine-tuned model knows ten classes and nothing else, so no score computed from it
separates photos of other things well (``ood_scores.py``: about 70% flagged at 15% of
right answers doubted). The ImageNet weights it started from know 1,000 classes, most
of them "other things". The gate asks that model how much of its probability falls on
ImageNet classes that are one of the bundled model's classes: little mass means the
photo shows something else.

Which ImageNet classes count as which class is learnt from the training split only (a
seeded sample of ``--per-class`` training thumbnails a class): ImageNet class j belongs
to class c when at least ``--purity`` of j's probability mass over the sample falls on
pictures of c and j takes at least ``--min-share`` of c's mass. Nothing is chosen on the
photos. Each photo goes to the gate sharp, squashed to the gate's side (ImageNet's
preprocessing, (x - 127) / 128), as an upload arrives; the bundled model sees it as the
app feeds it (``Predictor.predict_proba``: the model's own probabilities, which a
bundle's own gate does not touch; the gate is measured here).

The table: AUROC of the mass (photos of the classes against others), and at fixed mass
thresholds the share of class photos, of right answers and of other photos the gate
flags, alone and together with "not sure", as the served app decides (``gate.combine``:
the model's probabilities times the gate's votes over ImageNet's prior, then the bundle's
threshold; what issue 24 counts), with the gate network's single-image time here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from real_photos import dev_set_arguments, dev_set_files

from imageclf.data import load_dataset
from imageclf.data.dataset import TRAIN
from imageclf.imaging import open_image, picture_from_array, resize_for_model
from imageclf.models.efficientnet import imagenet_classes, pretrained
from imageclf.prediction.gate import combine, imagenet_prior, read_map
from imageclf.prediction.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.1, 0.25, 0.5)


def imagenet_probs(net: torch.nn.Module, pictures: list[np.ndarray]) -> np.ndarray:
    """(N, 1000) ImageNet probabilities of prepared (S, S, 3) uint8 pictures."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(pictures), 64):
            x = torch.from_numpy(np.stack(pictures[start : start + 64]))
            x = (x.permute(0, 3, 1, 2).float() - 127) / 128
            out.append(torch.softmax(net(x), dim=1).numpy())
    return np.concatenate(out)


def learn_map(probs: np.ndarray, labels: np.ndarray, n_classes: int, purity: float, share: float):
    """ImageNet class -> the model's class, from training pictures' probabilities."""
    mass = np.stack([probs[labels == c].sum(0) for c in range(n_classes)])  # (C, 1000)
    owner = mass.argmax(0)
    pure = mass.max(0) / np.maximum(mass.sum(0), 1e-12) >= purity
    big = mass[owner, np.arange(mass.shape[1])] / mass.sum(1)[owner] >= share
    return {int(j): int(owner[j]) for j in np.flatnonzero(pure & big)}


def written_map(path: Path, classes: list[str]) -> dict[int, int]:
    """A written map, read and checked as ``imageclf gate --map`` reads it
    (``gate.read_map``), turned around: ImageNet index -> the model's class."""
    groups = read_map(path, classes)
    return {j: classes.index(c) for c, indices in groups.items() for j in indices}


def votes(probs: np.ndarray, mapping: dict[int, int], n_classes: int) -> np.ndarray:
    """(N, classes): each class's share of ImageNet's probability (``Gate.votes``)."""
    return np.stack(
        [probs[:, [j for j, c in mapping.items() if c == k]].sum(1) for k in range(n_classes)],
        axis=1,
    )


def photo_side(files: list[Path], side: int) -> list[np.ndarray]:
    return [resize_for_model(open_image(f.read_bytes()), side) for f in files]


def single_image_ms(net: torch.nn.Module, side: int, repeats: int = 30) -> float:
    x = torch.zeros(1, 3, side, side)
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return round((time.perf_counter() - start) / repeats * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dev_set_arguments(parser, "the training data (CIFAR-10 archive)")
    parser.add_argument("--sides", default="128,160,224", help="the gate's input sides")
    parser.add_argument(
        "--map",
        default="learn",
        help="which ImageNet classes are which class: 'learn' (from training thumbnails) or a "
        "JSON file like src/imageclf/models/imagenet_to_cifar10.json (written from the names)",
    )
    parser.add_argument("--per-class", type=int, default=300, help="training thumbnails a class")
    parser.add_argument("--purity", type=float, default=0.6)
    parser.add_argument("--min-share", type=float, default=0.002)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/imagenet_gate.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    model = Predictor.load(args.model)
    classes = model.classes
    files, truth, others = dev_set_files(args.photos, args.others, classes)

    def served(paths: list[Path]) -> np.ndarray:
        return model.predict_proba(np.stack([model.prepare(model.decode(p)) for p in paths]))

    mine, theirs = served(files), served(others)
    right = mine.argmax(1) == truth
    unsure_in, unsure_out = model.unsure(mine), model.unsure(theirs)

    data = load_dataset(args.data, image_size=32, progress=False)
    rng = np.random.default_rng(0)
    train = np.flatnonzero(data.partition == TRAIN)
    labels_all = np.asarray(data.labels[train])
    sample = np.concatenate(
        [
            rng.choice(train[labels_all == c], args.per_class, replace=False)
            for c in range(len(classes))
        ]
    )
    net = pretrained().eval()
    names = imagenet_classes()
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        if args.map == "learn":
            thumbs = [resize_for_model(picture_from_array(data.images[i]), side) for i in sample]
            ref = imagenet_probs(net, thumbs)
        if args.map == "learn":
            mapping = learn_map(ref, np.asarray(data.labels[sample]), len(classes), args.purity,
                                args.min_share)  # fmt: skip
        else:
            mapping = written_map(Path(args.map), classes)
        keep = sorted(mapping)
        votes_in = votes(imagenet_probs(net, photo_side(files, side)), mapping, len(classes))
        votes_out = votes(imagenet_probs(net, photo_side(others, side)), mapping, len(classes))
        mass_in, mass_out = votes_in.sum(1), votes_out.sum(1)
        # what the served app does with a gate: the product of experts, its "not sure"
        named = {c: [j for j, k in mapping.items() if classes[k] == c] for c in classes}
        prior = imagenet_prior(named, classes)  # the served rule (Gate.judge)
        gated_in, gated_out = combine(mine, votes_in, prior), combine(theirs, votes_out, prior)
        right_gated = gated_in.argmax(1) == truth
        unsure_gated_in, unsure_gated_out = model.unsure(gated_in), model.unsure(gated_out)
        auroc = roc_auc_score(np.r_[np.zeros(len(mass_in)), np.ones(len(mass_out))],
                              -np.r_[mass_in, mass_out])  # fmt: skip
        row = {
            "side": side,
            "auroc": round(float(auroc), 4),
            "ms_single_image": single_image_ms(net, side),
            "gate_vote_accuracy": round(float((votes_in.argmax(1) == truth).mean()), 4),
            "model_times_gate_accuracy": round(float(right_gated.mean()), 4),
            "model_times_gate_per_class": {
                c: round(float(right_gated[truth == i].mean()), 4) for i, c in enumerate(classes)
            },
            "imagenet_classes_mapped": {
                classes[c]: [names[j] for j in keep if mapping[j] == c] for c in range(10)
            },
            "at": [],
        }
        for t in THRESHOLDS:
            gate_in, gate_out = mass_in < t, mass_out < t
            per_class = {c: float(gate_in[truth == i].mean()) for i, c in enumerate(classes)}
            row["at"].append(
                {
                    "threshold": t,
                    "class_photos_flagged": round(float(gate_in.mean()), 4),
                    "right_flagged": round(float(gate_in[right_gated].mean()), 4),
                    "others_flagged": round(float(gate_out.mean()), 4),
                    "with_unsure_right_flagged": round(
                        float((gate_in | unsure_gated_in)[right_gated].mean()), 4
                    ),
                    "with_unsure_others_flagged": round(
                        float((gate_out | unsure_gated_out).mean()), 4
                    ),
                    "class_photos_flagged_per_class": {
                        k: round(v, 4) for k, v in per_class.items()
                    },
                }
            )
        rows.append(row)

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    print(f"model alone: {pct(right.mean())} right; 'not sure' on {pct(unsure_in[right].mean())}"
          f" of right answers, {pct(unsure_out.mean())} of others")  # fmt: skip
    for r in rows:
        print(f"gate at {r['side']} px: its own vote {pct(r['gate_vote_accuracy'])} right, "
              f"with the model {pct(r['model_times_gate_accuracy'])}")  # fmt: skip
    print("| gate side | AUROC | 1-image ms | mass under | class photos | right answers |"
          " others | right, with 'not sure' | others, with 'not sure' |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for a in r["at"]:
            print(f"| {r['side']} | {r['auroc']:.3f} | {r['ms_single_image']} | {a['threshold']} | "
                  f"{pct(a['class_photos_flagged'])} | {pct(a['right_flagged'])} | "
                  f"{pct(a['others_flagged'])} | {pct(a['with_unsure_right_flagged'])} | "
                  f"{pct(a['with_unsure_others_flagged'])} |")  # fmt: skip
    write_result(
        args.out,
        rows,
        load_before,
        model=args.model,
        map=args.map,
        per_class=args.per_class,
        purity=args.purity,
        min_share=args.min_share,
        model_alone={
            "right_flagged": round(float(unsure_in[right].mean()), 4),
            "others_flagged": round(float(unsure_out.mean()), 4),
            "accuracy": round(float(right.mean()), 4),
        },
    )


if __name__ == "__main__":
    main()
