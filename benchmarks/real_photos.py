"""Real photos through the served path: accuracy, honest confidences, "not sure" rates, latency.

    python benchmarks/real_photos.py [--model PATH ...] [--photos DIR] [--others DIR]

``--photos DIR`` holds real photos of the model's classes, one folder per class
(``DIR/cat/*.jpg``; the folder is the label, folders the model has no class for are
skipped). ``--others DIR`` holds photos of anything else (``DIR/person/*.jpg``,
``DIR/giraffe/...``): every answer there is wrong, and the honest one is "not sure".
Neither folder is part of this repository (see the report in docs/benchmarks.md for
where ours came from).

Every photo goes through ``ModelService.classify`` exactly as an upload to the web app
does: decoded once with the web allowlist and shrunk to the page's working size
(``imaging.decode_image``), squashed to the model's input by ``Predictor.prepare``,
calibrated probabilities from ``predict_proba``, and the page's own "not sure" rule
(top-1 below ``Predictor.unsure_below``, the bundle's validated threshold). So the
numbers are what a user of the served app would see, photo by photo.

Latency is single-image, one torch thread: ``Predictor.predict`` on the photo's bytes
(the API's path) and the whole served classification above (without HTTP). Both
include decoding, which for a large JPEG costs more than a 32 px forward pass.

``--shrink-to 32`` (the default) also scores every photo squashed to 32 x 32 first and
sent as a PNG: a diagnosis, not what the app does. A model fine-tuned at 64 px on
CIFAR's 32 px thumbnails learnt from upsampled, blurry pictures; if it does much better
on the squashed photos than on the sharp ones, the gap is the sharpness it never saw.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

from imageclf.imaging import WEB_FORMATS, decode_image
from imageclf.prediction.files import collect_images
from imageclf.prediction.predictor import Predictor, default_model_path
from imageclf.web.service import ModelService
from imageclf.web.uploads import Upload

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5


@dataclass
class Answer:
    """What the served app said about one photo."""

    path: Path
    truth: str  # the folder: a class of the model, or what an out-of-class photo shows
    label: str
    confidence: float  # calibrated top-1 probability
    unsure: bool  # the page would say "not sure" instead of a confident headline
    seconds: float  # the whole served classification of this one photo
    outside: bool = False  # the page would say "not one of its classes"

    @property
    def right(self) -> bool:
        return self.label == self.truth

    @property
    def doubted(self) -> bool:
        """Either doubt: what issue 24 counts as "not sure" (no confident headline)."""
        return self.unsure or self.outside


def dev_set_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The options of the benchmarks that score one model on the mirror and the photos."""
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--photos", type=Path, required=True, help="DIR/<class>/*.jpg")
    parser.add_argument("--others", type=Path, required=True, help="DIR/<what>/*.jpg")
    parser.add_argument("--model", default=str(default_model_path()))


def dev_set_files(
    photos: Path, others: Path, classes: list[str]
) -> tuple[list[Path], np.ndarray, list[Path]]:
    """The class photos in the model's class order, their class indices, and the photos
    of other things (``--photos`` and ``--others``)."""
    groups = folders(photos)
    files = [f for c in classes for f in groups.get(c, [])]
    truth = np.array([classes.index(c) for c in classes for _ in groups.get(c, [])])
    return files, truth, [f for fs in folders(others).values() for f in fs]


def folders(root: Path) -> dict[str, list[Path]]:
    """``root/<name>/`` -> its image files (sorted, hidden files skipped)."""
    if not root.is_dir():
        raise SystemExit(f"no such folder: {root}")
    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, _ = collect_images([sub])
        if files:
            found[sub.name] = files
    if not found:
        raise SystemExit(f"{root} has no <name>/ folders with images in them")
    return found


def shrunk(data: bytes, size: int) -> bytes:
    """The photo squashed to ``size`` x ``size`` first (as CIFAR's thumbnails were made),
    sent as a PNG: what a model trained on upsampled thumbnails has learnt to see."""
    picture = decode_image(data, formats=WEB_FORMATS).picture
    buffer = io.BytesIO()
    picture.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0).save(buffer, "PNG")
    return buffer.getvalue()


def classify(
    service: ModelService, groups: dict[str, list[Path]], shrink_to: int | None = None
) -> list[Answer]:
    """Each photo as its own request, the way a user uploads one picture at a time."""
    answers = []
    for truth, files in groups.items():
        for path in files:
            data = path.read_bytes()
            if shrink_to:
                data = shrunk(data, shrink_to)
            upload = Upload(filename=path.name, data=data)
            start = time.perf_counter()
            (result,) = service.classify([upload], top_k=1)
            seconds = time.perf_counter() - start
            label, confidence = result.top[0]
            answers.append(
                Answer(path, truth, label, confidence, result.unsure, seconds, result.outside)
            )
    return answers


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


def _fraction(flags) -> float | None:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else None


def _by_group(
    answers: list[Answer], **figures: Callable[[list[Answer]], float | None]
) -> dict[str, dict]:
    """Per class (or kind of other photo): how many, the caller's ``figures`` of that
    group's answers, how often "not sure", and what they were called."""
    groups: dict[str, dict] = {}
    for what in sorted({a.truth for a in answers}):
        mine = [a for a in answers if a.truth == what]
        groups[what] = {
            "photos": len(mine),
            **{name: figure(mine) for name, figure in figures.items()},
            "unsure": _fraction(a.unsure for a in mine),
            "doubted": _fraction(a.doubted for a in mine),
            "predicted": dict(Counter(a.label for a in mine).most_common()),
        }
    return groups


def in_class_summary(answers: list[Answer]) -> dict:
    """Accuracy (over photos, and the mean over classes, since the folders differ in
    size), confidence on right and wrong answers, and how often each gets "not sure"."""
    right = [a for a in answers if a.right]
    wrong = [a for a in answers if not a.right]
    per_class = _by_group(answers, accuracy=lambda mine: _fraction(a.right for a in mine))
    return {
        "photos": len(answers),
        "accuracy": _fraction(a.right for a in answers),
        "class_mean_accuracy": _mean(c["accuracy"] for c in per_class.values()),
        "confidence_right": _mean(a.confidence for a in right),
        "confidence_wrong": _mean(a.confidence for a in wrong),
        "unsure_when_right": _fraction(a.unsure for a in right),
        "unsure_when_wrong": _fraction(a.unsure for a in wrong),
        "outside_when_right": _fraction(a.outside for a in right),
        "doubted_when_right": _fraction(a.doubted for a in right),
        "doubted_when_wrong": _fraction(a.doubted for a in wrong),
        # the answers a user would take at face value and be misled by
        "confidently_wrong": _fraction(not a.right and not a.doubted for a in answers),
        "per_class": per_class,
    }


def out_of_class_summary(answers: list[Answer]) -> dict:
    per_group = _by_group(answers, confidence=lambda mine: _mean(a.confidence for a in mine))
    return {
        "photos": len(answers),
        "unsure": _fraction(a.unsure for a in answers),
        "outside": _fraction(a.outside for a in answers),
        "doubted": _fraction(a.doubted for a in answers),
        "confidence": _mean(a.confidence for a in answers),
        "per_group": per_group,
    }


def predict_latency_ms(predictor: Predictor, files: list[Path]) -> dict:
    """``Predictor.predict`` on each photo's bytes, one at a time, after a warm-up."""
    photos = [p.read_bytes() for p in files]
    for data in photos[:WARMUP]:
        predictor.predict(data, top_k=1)
    times = []
    for data in photos:
        start = time.perf_counter()
        predictor.predict(data, top_k=1)
        times.append((time.perf_counter() - start) * 1000)
    return _percentiles(times)


def _percentiles(ms: list[float]) -> dict:
    p50, p90 = np.percentile(ms, [50, 90])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "n": len(ms)}


def score_model(
    path: str,
    photos: dict[str, list[Path]],
    others: dict[str, list[Path]],
    shrink_to: int | None = None,
) -> dict:
    service = ModelService(path)
    predictor = service.load()
    mine = {cls: files for cls, files in photos.items() if cls in predictor.classes}
    if not mine:
        raise SystemExit(f"none of the photo folders is a class of {path}: {predictor.classes}")
    every = [p for files in mine.values() for p in files]
    service.classify([Upload(p.name, p.read_bytes()) for p in every[:WARMUP]], top_k=1)
    inside = classify(service, mine)
    outside = classify(service, others)
    meta = predictor.metadata
    result = {
        "model": predictor.name,
        "path": str(path),
        "architecture": meta.architecture,
        "input_size": predictor.input_size,
        "test_accuracy": meta.test_accuracy,
        "temperature": predictor.temperature,
        "unsure_below": predictor.unsure_below,
        "skipped_folders": sorted(set(photos) - set(mine)),
        "in_class": in_class_summary(inside),
        "out_of_class": out_of_class_summary(outside),
        "latency_ms": {
            "served_classify": _percentiles([a.seconds * 1000 for a in inside + outside]),
            "predictor_predict": predict_latency_ms(predictor, every),
        },
    }
    if shrink_to:  # a diagnosis, not the served path: see --shrink-to
        result["shrunk_first"] = {
            "size": shrink_to,
            "in_class": in_class_summary(classify(service, mine, shrink_to)),
            "out_of_class": out_of_class_summary(classify(service, others, shrink_to)),
        }
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _shrunk(result: dict, part: str, key: str) -> str:
    return _pct(result["shrunk_first"][part][key]) if "shrunk_first" in result else "-"


def _ms(result: dict, path: str) -> str:
    return f"{result['latency_ms'][path]['p50']} ms"


def print_tables(results: list[dict]) -> None:
    names = [f"{r['model']} ({r['input_size']} px)" for r in results]
    shrink = results[0].get("shrunk_first", {}).get("size")
    rows = [
        ("photos of the classes", lambda r: str(r["in_class"]["photos"])),
        ("accuracy", lambda r: _pct(r["in_class"]["accuracy"])),
        ("accuracy, mean over classes", lambda r: _pct(r["in_class"]["class_mean_accuracy"])),
        ("mean confidence, right answers", lambda r: _pct(r["in_class"]["confidence_right"])),
        ("mean confidence, mistakes", lambda r: _pct(r["in_class"]["confidence_wrong"])),
        ("'not sure' threshold", lambda r: _pct(r["unsure_below"])),
        ("'not sure' on right answers", lambda r: _pct(r["in_class"]["unsure_when_right"])),
        ("'not sure' on mistakes", lambda r: _pct(r["in_class"]["unsure_when_wrong"])),
        (
            "'not one of its classes' on right answers",
            lambda r: _pct(r["in_class"].get("outside_when_right")),
        ),
        ("either doubt on right answers", lambda r: _pct(r["in_class"].get("doubted_when_right"))),
        ("either doubt on mistakes", lambda r: _pct(r["in_class"].get("doubted_when_wrong"))),
        ("confidently wrong (of all photos)", lambda r: _pct(r["in_class"]["confidently_wrong"])),
        ("out-of-class photos", lambda r: str(r["out_of_class"]["photos"])),
        ("'not sure' on out-of-class", lambda r: _pct(r["out_of_class"]["unsure"])),
        (
            "'not one of its classes' on out-of-class",
            lambda r: _pct(r["out_of_class"].get("outside")),
        ),
        ("either doubt on out-of-class", lambda r: _pct(r["out_of_class"].get("doubted"))),
        ("mean confidence, out-of-class", lambda r: _pct(r["out_of_class"]["confidence"])),
        (
            f"accuracy, photo squashed to {shrink} px first",
            lambda r: _shrunk(r, "in_class", "accuracy"),
        ),
        (
            "'not sure' on out-of-class, squashed first",
            lambda r: _shrunk(r, "out_of_class", "unsure"),
        ),
        ("p50 latency, Predictor.predict", lambda r: _ms(r, "predictor_predict")),
        ("p50 latency, served classify", lambda r: _ms(r, "served_classify")),
    ]
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(results))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    classes = sorted({c for r in results for c in r["in_class"]["per_class"]})
    print("\n| class | photos | " + " | ".join(f"{n} acc / either doubt" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(results))
    for cls in classes:
        cells = []
        for r in results:
            c = r["in_class"]["per_class"].get(cls)
            cells.append("-" if c is None else f"{_pct(c['accuracy'])} / {_pct(c['doubted'])}")
        photos = max(r["in_class"]["per_class"].get(cls, {}).get("photos", 0) for r in results)
        print(f"| {cls} | {photos} | " + " | ".join(cells) + " |")

    groups = sorted({g for r in results for g in r["out_of_class"]["per_group"]})
    print("\n| out of class | photos | " + " | ".join(f"{n} either doubt" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(results))
    for what in groups:
        per = [r["out_of_class"]["per_group"][what] for r in results]
        print(
            f"| {what} | {per[0]['photos']} | " + " | ".join(_pct(g["doubted"]) for g in per) + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        help="bundle (repeatable; default: the bundled model)",
    )
    parser.add_argument("--photos", type=Path, required=True, help="DIR/<class>/*.jpg")
    parser.add_argument("--others", type=Path, required=True, help="DIR/<what>/*.jpg")
    parser.add_argument(
        "--shrink-to",
        type=int,
        default=32,
        help="also score every photo squashed to this size first (0: don't); tells whether "
        "a model fine-tuned on upsampled 32 px thumbnails misreads sharp photos (default 32)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/real_photos.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # one request on one core, as a worker of the served app
    photos, others = folders(args.photos), folders(args.others)
    load_before = loadavg()
    models = args.model or [str(default_model_path())]
    results = [score_model(path, photos, others, args.shrink_to) for path in models]
    result = {
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "photos": str(args.photos),
        "others": str(args.others),
        "photo_counts": {cls: len(files) for cls, files in photos.items()},
        "other_counts": {what: len(files) for what, files in others.items()},
        "models": results,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(results)


if __name__ == "__main__":
    main()
