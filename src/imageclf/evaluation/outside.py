"""How well a model tells pictures of other things from its own classes (``evaluate
--others DIR``): the "is this one of my classes?" rule (``calibration.familiarity`` under
the bundle's ``familiar_above``) measured on a folder of outside pictures against the
evaluated split.

AUROC says how well familiarity separates the two over every threshold; the rates at
the bundle's own threshold say what the page and the API will actually do: the share of
outside pictures called outside, and the share of the model's own pictures (and of its
right answers) it would wrongly doubt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..calibration import detection_rates, familiarity
from ..errors import UserInputError
from ..fileio import printable
from ..prediction.files import collect_images
from ..prediction.gate import Survey
from ..prediction.predictor import Predictor

CHUNK = 256  # pictures per forward pass


def _familiarity(predictor: Predictor, images: np.ndarray, step: Callable[[int], None]):
    """(familiarity, predicted class) of prepared uint8 pictures, in chunks."""
    scores, predicted = [], []
    for start in range(0, len(images), CHUNK):
        logits = predictor.calibrated_logits(images[start : start + CHUNK])
        scores.append(familiarity(logits))
        predicted.append(logits.argmax(axis=1))
        step(len(logits))
    return np.concatenate(scores), np.concatenate(predicted)


def read_others(
    predictor: Predictor, folder: str | os.PathLike
) -> tuple[np.ndarray, int, Survey | None]:
    """The outside pictures of ``folder`` (recursively) as the model's input, decoded the
    way every caller decodes them; how many files could not be read; and, for a bundle
    with an ImageNet gate, its survey of them (the decoded photos are not kept: the
    gate's pass runs on each as it is read), else None."""
    files, missing = collect_images([Path(folder)])
    if missing:
        raise UserInputError(f"--others: {missing[0]} does not exist")
    gate = predictor.gate
    pictures, surveys, failed = [], [], 0
    for path in files:
        try:
            decoded = predictor.decode(path)
        except UserInputError:
            failed += 1
            continue
        pictures.append(predictor.prepare(decoded))
        if gate is not None:
            surveys.append(gate.survey([decoded]))
    if not pictures:
        raise UserInputError(f"--others: no readable pictures in {folder}")
    survey = Survey.joined(surveys) if gate is not None else None  # pictures: not empty
    return np.stack(pictures), failed, survey


def measure_others(
    predictors: list[Predictor],
    inside: np.ndarray,
    labels: np.ndarray,
    folder: str | os.PathLike,
    split: str,
) -> dict:
    """``metrics["out_of_class"]``: the first model's rule (an ensemble has no single
    threshold) on ``folder`` against the evaluated ``split``."""
    others, failed, survey = read_others(predictors[0], folder)
    found = out_of_class(predictors[0], inside, labels, others, survey=survey)
    found.update(folder=printable(folder), split=split, unreadable=failed)
    if survey is not None:
        found["note"] = (
            "outside pictures judged as the app judges them: by the ImageNet gate where it "
            "sees a photo, else by familiarity; AUROC is familiarity's alone"
        )
    if len(predictors) > 1:
        found["note"] = "measured for the first model of the ensemble"
    return found


def out_of_class(
    predictor: Predictor,
    inside: np.ndarray,
    labels: np.ndarray,
    others: np.ndarray,
    step: Callable[[int], None] = lambda n: None,
    survey: Survey | None = None,
) -> dict:
    """The detection figures for ``others`` against ``inside`` (the evaluated split's
    prepared pictures and their labels, in the model's class order). With the gate's
    ``survey`` of ``others``, their ``outside_flagged`` is what the app says of them
    (``Predictor.verdict``: the gate on the photos it sees, familiarity on the rest)."""
    familiar_in, predicted = _familiarity(predictor, inside, step)
    familiar_out, _ = _familiarity(predictor, others, step)
    threshold = predictor.familiar_above
    if threshold is None:  # a bundle from before the rule: AUROC still says something
        rates = detection_rates(familiar_in, familiar_out, -np.inf)
        rates.update(outside_flagged=None, inside_flagged=None, right_flagged=None)
        rates["note"] = "the model has no familiar_above threshold (trained before it existed)"
    else:
        rates = detection_rates(familiar_in, familiar_out, threshold)
        right = predicted == labels
        flagged = familiar_in[right] < threshold
        rates["right_flagged"] = round(float(flagged.mean()), 4) if right.any() else None
        rates["familiar_above"] = threshold
    if survey is not None and predictor.gate is not None:
        flags = np.zeros(len(familiar_out), bool) if threshold is None else familiar_out < threshold
        flags[survey.seen] = predictor.gate.outside(survey.votes)
        rates["outside_flagged"] = round(float(flags.mean()), 4)
    return rates
