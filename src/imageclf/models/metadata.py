"""What a bundle says about itself: ``BundleMetadata``, the JSON metadata with typed
accessors, and its schema, checked once when a bundle is loaded (or written).

A valid digest proves only that nobody changed the file since it was written, not
that its writer was friendly: every field a reader uses (evaluate, info, the web app)
is checked here, so a bundle that loads can be described, served and evaluated.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .class_names import MAX_TEXT, check_class_names, check_text
from .multilabel import MULTI_LABEL, LabelCalibration, calibration_of, check_task, thresholds_of

REQUIRED_KEYS = ("architecture", "arch_kwargs", "classes", "input_size", "normalization")
# The input sizes a bundle may declare. Training refuses others too, so every bundle it
# writes loads. 512 keeps a full 64-image request of prepared inputs under ~200 MB.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 512


class BundleMetadata(dict):
    """A bundle's JSON metadata (a plain dict, as stored) with typed accessors.

    ``check`` validates it once when the bundle is loaded, so every accessor can trust
    its type: callers write ``meta.input_size``, never ``int(meta.get(...) or ...)``.
    """

    @property
    def architecture(self) -> str:
        return self["architecture"]

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return self["arch_kwargs"]

    @property
    def classes(self) -> list[str]:
        return list(self["classes"])

    @property
    def input_size(self) -> int:
        return self["input_size"]

    @property
    def source_size(self) -> int | None:
        """The side training pictures were made at (CIFAR: 32), below the input size: served
        pictures are reduced to it first, so the model sees what it learnt from."""
        return (self.get("preprocessing") or {}).get("source_size")

    @property
    def mean(self) -> list[float]:
        return list(self["normalization"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self["normalization"]["std"])

    @property
    def name(self) -> str:
        return self.get("name") or self.architecture

    @property
    def recipe(self) -> str | None:
        return self.get("recipe")

    @property
    def config(self) -> dict[str, Any]:
        """The training config (empty for bundles not written by ``imageclf train``)."""
        return self.get("config") or {}

    @property
    def data_source(self) -> str | None:
        return (self.get("data") or {}).get("source")

    @property
    def data_fingerprint(self) -> str | None:
        return (self.get("data") or {}).get("fingerprint")

    @property
    def split(self) -> dict[str, Any] | None:
        """The recorded split: ``name``, ``seed``, ``sizes`` and ``digest``."""
        return self.get("split")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.get("metrics") or {}

    @property
    def test_accuracy(self) -> float | None:
        value = (self.metrics.get("test") or {}).get("accuracy")
        return float(value) if _is_number(value) else None

    @property
    def temperature(self) -> float:
        """Logits are divided by this before the softmax (1.0: the bundle is not calibrated)."""
        return float((self.get("calibration") or {}).get("temperature", 1.0))

    @property
    def unsure_below(self) -> float | None:
        """Calibrated top-1 confidence under which a prediction is "not sure which class";
        chosen on validation data (``calibration.threshold``), None when not calibrated."""
        value = (self.get("calibration") or {}).get("threshold")
        return float(value) if _is_number(value) else None

    @property
    def familiar_above(self) -> float | None:
        """Familiarity (``calibration.familiarity``) under which a picture is "not one of
        its classes"; None for bundles trained before the rule existed."""
        value = (self.get("calibration") or {}).get("familiar_above")
        return float(value) if _is_number(value) else None

    @property
    def multi_label(self) -> bool:
        """True for ``"task": "multi_label"``: independent sigmoids, any number of labels."""
        return self.get("task") == MULTI_LABEL

    @property
    def label_thresholds(self) -> list[float] | None:
        """Each label's threshold on its calibrated probability (multi-label only)."""
        return thresholds_of(self)

    @property
    def label_calibration(self) -> LabelCalibration | None:
        """Each label's logit scale and bias before the sigmoid (multi-label only)."""
        return calibration_of(self)

    @property
    def created(self) -> str | None:
        return self.get("created")

    @property
    def versions(self) -> dict[str, str]:
        return self.get("versions") or {}

    @classmethod
    def check(cls, raw: Any) -> BundleMetadata:
        """The schema: raises ``ValueError`` naming the first offending field."""
        if not isinstance(raw, dict):
            raise ValueError("metadata is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise ValueError(f"lacks metadata: {', '.join(missing)}")
        check_text(raw["architecture"], "architecture")
        _expect(isinstance(raw["arch_kwargs"], dict), "arch_kwargs must be a JSON object")
        check_class_names(raw["classes"])
        size = raw["input_size"]
        _expect(
            type(size) is int and MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE,
            f"input_size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
            f"got {json.dumps(size)[:40]}",
        )
        norm = raw["normalization"]
        _expect(isinstance(norm, dict), "normalization must be a JSON object")
        for key, low in (("mean", -1e3), ("std", 1e-6)):
            values = norm.get(key)
            _expect(
                isinstance(values, list)
                and len(values) == 3
                and all(_is_number(v) and low <= v <= 1e3 for v in values),
                f"normalization.{key} must be 3 numbers from {low:g} to 1000",
            )
        for key in ("name", "recipe", "created"):
            if raw.get(key) is not None:
                check_text(raw[key], key, limit=10 * MAX_TEXT)
        for key in ("config", "data", "metrics", "versions"):
            _expect(raw.get(key) is None or isinstance(raw[key], dict), f"{key} must be an object")
        for key in ("source", "fingerprint"):
            value = (raw.get("data") or {}).get(key)
            _expect(value is None or isinstance(value, str), f"data.{key} must be a string")
        calibration = raw.get("calibration")
        if calibration is not None:
            _expect(isinstance(calibration, dict), "calibration must be an object")
            t = calibration.get("temperature", 1.0)
            _expect(_is_number(t) and 0.01 <= t <= 100, "calibration.temperature must be 0.01-100")
            th = calibration.get("threshold")
            _expect(th is None or (_is_number(th) and 0 <= th <= 1), "calibration.threshold: 0-1")
            fa = calibration.get("familiar_above")
            _expect(fa is None or _is_number(fa), "calibration.familiar_above must be a number")
        split = raw.get("split")
        if split is not None:
            _expect(
                isinstance(split, dict)
                and isinstance(split.get("name"), str)
                and type(split.get("seed")) is int
                and 0 <= split["seed"] < 2**32
                and isinstance(split.get("sizes", {}), dict)
                and isinstance(split.get("digest", ""), str),
                "split must be an object with a name, an integer seed from 0 to 2^32-1, "
                "sizes and a digest",
            )
        _check_read_fields(raw)
        check_task(raw)
        if raw.get("gate") is not None:
            _expect(raw.get("task") != MULTI_LABEL, "a multi-label model takes no gate")
            check_gate(raw["gate"], raw["classes"])
        return cls(raw)


# The ImageNet gate (``prediction.gate``): which network, at which side, over how many classes.
GATE_ARCHITECTURE = "efficientnet-lite0"
GATE_SIDE = 160  # photos are judged at this side (docs/benchmarks.md: accuracy vs latency)
IMAGENET_CLASSES = 1000


def check_gate(gate: dict, classes: list[str]) -> None:
    """The ``gate`` metadata's schema (``prediction.gate`` reads it): the ImageNet network
    it names and each class's ImageNet indices, no index claimed by two classes."""
    if not isinstance(gate, dict):
        raise ValueError("gate must be an object")
    if gate.get("architecture") != GATE_ARCHITECTURE:
        raise ValueError(f"gate.architecture must be {GATE_ARCHITECTURE}")
    if gate.get("side") != GATE_SIDE:
        raise ValueError(f"gate.side must be {GATE_SIDE}")
    below = gate.get("outside_below")
    if type(below) not in (int, float) or not 0 <= below <= 1:
        raise ValueError("gate.outside_below must be a number from 0 to 1")
    groups = gate.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError("gate.groups must map class names to ImageNet class indices")
    seen: set[int] = set()
    for name, indices in groups.items():
        if name not in classes:
            raise ValueError(f"gate.groups names {str(name)[:40]!r}, which is not a class")
        if not isinstance(indices, list) or not all(
            type(j) is int and 0 <= j < IMAGENET_CLASSES for j in indices
        ):
            raise ValueError(f"gate.groups.{name} must be a list of indices 0-999")
        if seen & set(indices):
            raise ValueError(f"gate.groups.{name} repeats an index another class has")
        seen |= set(indices)


# The parts of ``metrics`` and ``config`` that evaluate, info and the web app read: each
# checked at load, so a bundle that loads can be described and evaluated (a metrics.test
# of "x" used to let serve say ready while every page was a 500).
METRIC_SPLITS = ("train", "val", "test", "val_tta", "test_tta")
CONFIG_FIELDS = {  # field -> (check, what it must be)
    "val_size": (lambda v: v is None or (type(v) is int and v >= 0), "null or an integer >= 0"),
    "subset": (lambda v: v is None or (type(v) is int and v >= 1), "null or an integer >= 1"),
    "label_smoothing": (lambda v: v is None or (_is_number(v) and 0 <= v < 1), "a number 0-1"),
}


def _check_read_fields(raw: dict) -> None:
    metrics = raw.get("metrics") or {}
    for split in METRIC_SPLITS:
        entry = metrics.get(split)
        if entry is None:
            continue
        _expect(isinstance(entry, dict), f"metrics.{split} must be an object")
        for key, high in (("accuracy", 1.0), ("loss", math.inf)):
            value = entry.get(key)
            _expect(
                value is None or (_is_number(value) and 0 <= value <= high),
                f"metrics.{split}.{key} must be a number from 0 to {high:g}",
            )
    config = raw.get("config") or {}
    for key, (ok, what) in CONFIG_FIELDS.items():
        _expect(ok(config.get(key)), f"config.{key} must be {what}")
    preprocessing = raw.get("preprocessing")
    _expect(
        preprocessing is None or isinstance(preprocessing, dict), "preprocessing must be an object"
    )
    source = (preprocessing or {}).get("source_size")
    _expect(
        source is None or (type(source) is int and MIN_INPUT_SIZE <= source <= raw["input_size"]),
        f"preprocessing.source_size must be a whole number from {MIN_INPUT_SIZE} to the input size",
    )


def finite_or_null(value: Any) -> Any:
    """Metadata as JSON can hold it: NaN and infinity (which ``json.dumps`` writes as
    bare ``NaN``, invalid JSON) become null, so every bundle we write loads again."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
