"""Prediction: ``Predictor``, the one path from a picture to class probabilities for
the CLI, the reports and the web app; and ``imageclf predict`` over files and folders.

Callers never reach into the model: ``Predictor`` prepares pictures, computes
(log-)probabilities with optional TTA and Grad-CAM, and says what its bundle holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..device import resolve_device, resolve_precision
from ..errors import BundleError, ImageError, UserInputError
from ..fileio import unreadable_reason
from ..imaging import IMAGE_EXTENSIONS, ImageSource, open_image, resize_for_model
from ..models.bundle import Bundle, BundleMetadata, build_model, load_bundle
from .gradcam import DEFAULT_SIZE, Explanation, GradCAM, gradcam_batch, overlay
from .inference import Normalizer, predict_logits

DEFAULT_BUNDLE = "default.safetensors"
Picture = ImageSource | np.ndarray  # a file, bytes, PIL image, or an HxWx3 array (see _from_array)


def is_onnx_path(path: str | os.PathLike | None) -> bool:
    """An exported ONNX model (``imageclf export``) rather than a bundle."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


def default_model_path() -> Path:
    """The pretrained model shipped inside the package."""
    path = Path(str(resources.files("imageclf") / "weights" / DEFAULT_BUNDLE))
    if not path.is_file():
        raise BundleError(
            f"the bundled default model is missing ({path}); pass a model file explicitly"
        )
    return path


# ---------------------------------------------------------------- Predictor
class Predictor:
    """A loaded model plus its preprocessing, ready to classify images."""

    # Grad-CAM needs the torch model's gradients; the ONNX backend sets this False.
    explainable = True
    backend = "pytorch"  # what runs the forward pass (metrics label, /api/v1/model)

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32") -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.model = build_model(bundle).to(self.device, memory_format=torch.channels_last)
        self._amp_dtype = resolve_precision(self.device, precision)
        self._normalizer = Normalizer(self.metadata.mean, self.metadata.std)

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, device: str = "cpu", precision: str = "fp32"
    ) -> Predictor:
        """``path=None`` loads the bundled default model; a ``.onnx`` file runs on
        onnxruntime (``imageclf[onnx]``) behind this same API."""
        if is_onnx_path(path):
            from .onnx_backend import OnnxPredictor

            return OnnxPredictor.load(path, device=device, precision=precision)
        return cls(load_bundle(path or default_model_path()), device=device, precision=precision)

    @property
    def metadata(self) -> BundleMetadata:
        return self.bundle.metadata

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    # ------------------------------------------------------------ pictures in
    def prepare(self, picture: Image.Image | np.ndarray) -> np.ndarray:
        """One *decoded* picture (upright RGB, e.g. from ``imaging.open_image``, or a uint8
        HxWx3 array) -> the model's input, (S, S, 3) uint8 squashed to S x S. It is not
        decoded or oriented again: decode once, then pass the picture along."""
        if isinstance(picture, np.ndarray):
            picture = _from_array(picture)
        elif picture.mode != "RGB":
            picture = picture.convert("RGB")
        return resize_for_model(picture, self.input_size)

    def preprocess(self, images: Picture | Sequence[Picture]) -> np.ndarray:
        """Decode (files, bytes, PIL images: ``open_image``) and prepare: (N, S, S, 3) uint8."""
        return np.stack([self.prepare(_decode(item)) for item in _as_list(images)])

    # ------------------------------------------------------------ probabilities out
    @property
    def temperature(self) -> float:
        """Fitted on validation at the end of training; every output below is divided by it."""
        return self.metadata.temperature

    def _logits(self, batch_u8: np.ndarray, tta: bool) -> torch.Tensor:
        """Calibrated logits (``logits / temperature``): the one place confidences are made."""
        logits = predict_logits(
            self.model,
            torch.from_numpy(np.ascontiguousarray(batch_u8)),
            self._normalizer,
            tta=tta,
            device=self.device,
            amp_dtype=self._amp_dtype,
        )
        return logits / self.temperature

    def log_probs(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Natural-log probabilities (N, classes), float64, for prepared uint8 images.
        ``tta`` averages over flipped and 1-pixel-shifted views."""
        return torch.log_softmax(self._logits(batch_u8, tta).double(), dim=1).numpy()

    def predict_proba(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Probabilities (N, classes), float32, for prepared uint8 images."""
        return torch.softmax(self._logits(batch_u8, tta), dim=1).numpy()

    def predict(
        self, images: Picture | Sequence[Picture], top_k: int = 3, *, tta: bool = False
    ) -> list[list[tuple[str, float]]]:
        """One list of (label, probability), most likely first, per image. An image is a
        path, bytes, a file object, a PIL image or an HxWx3 NumPy array, uint8 or floats
        in 0..1 (an NxHxWx3 array is a batch)."""
        if top_k < 1:
            raise UserInputError("top_k must be at least 1")
        probs = self.predict_proba(self.preprocess(images), tta=tta)
        return [self.top(p, top_k) for p in probs]

    def top(self, probs: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs of one row of probabilities."""
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(self.classes))]
        return [(self.classes[i], float(probs[i])) for i in order]

    # ------------------------------------------------------------ explanations
    def gradcam(
        self, batch_u8: np.ndarray, class_indices=None, *, layer: str | None = None
    ) -> GradCAM:
        """Grad-CAM of prepared uint8 images; ``class_indices=None`` explains each
        image's predicted class; ``layer`` names a module (default: the last Conv2d)."""
        return gradcam_batch(
            self.model,
            self._normalizer,
            batch_u8,
            class_indices,
            layer=layer,
            device=self.device,
            temperature=self.temperature,
        )

    def explain(
        self,
        image: Picture,
        class_index: int | None = None,
        *,
        layer: str | None = None,
        size: int = DEFAULT_SIZE,
    ) -> Explanation:
        """Grad-CAM of one picture, drawn on the picture itself (squashed to a square, as
        the model sees it) rather than on the tiny model input, so it stays sharp."""
        picture = _decode(image)
        batch = self.prepare(picture)[None]
        cam = self.gradcam(batch, None if class_index is None else [class_index], layer=layer)
        index = int(cam.class_indices[0])
        return Explanation(
            heatmap=cam.heatmaps[0],
            overlay=overlay(picture, cam.heatmaps[0], size),
            class_index=index,
            label=self.classes[index],
            probability=float(cam.probabilities[0, index]),
            layer=cam.layer,
        )


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)  # a batch: N x H x W x C
    return [images]


def _from_array(array: np.ndarray) -> Image.Image:
    """A picture from an HxW, HxWx1, HxWx3 or HxWx4 array: uint8 as it is; floats in
    0..1 (the scikit-image and matplotlib convention) scaled to 0..255; any other numbers
    must already lie in 0..255. A plain cast would wrap or truncate them into a picture
    of noise (0.7 -> 0) and give a confident answer about it."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UserInputError(
            f"an image array must be HxW or HxWxC with 1, 3 or 4 channels, got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
            raise UserInputError(f"an image array must hold numbers, got {array.dtype}")
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UserInputError("an image array must not hold NaN or infinity")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1:
            values = values * 255.0
        elif low < 0 or high > 255:
            raise UserInputError(
                f"image array values must lie in 0..255 (or 0..1 for floats), got {low:g}..{high:g}"
            )
        array = np.rint(values).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _decode(image: Picture) -> Image.Image:
    return _from_array(image) if isinstance(image, np.ndarray) else open_image(image)


# ---------------------------------------------------------------- imageclf predict: files
BATCH_SIZE = 64
EXPLAIN_SIZE = 256


@dataclass
class FileResult:
    """One input file: its top-k predictions, or why it could not be classified."""

    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None
    explanation: str | None = None  # where its Grad-CAM overlay was written

    @property
    def ok(self) -> bool:
        return self.error is None


def collect_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[FileResult]]:
    """Expand folders (recursively, sorted, hidden files skipped) into image files.

    Inside folders only files with an image extension are tried (a README or .DS_Store
    is not a failed image); a file named explicitly is always tried.

    Returns the files and a failure entry for every input that is neither (missing, a
    symlink loop, a FIFO...), saying which.
    """
    files: list[Path] = []
    missing: list[FileResult] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            missing.append(FileResult(str(path), error=unreadable_reason(path)))
    return files, missing


def _explain_name(path: Path, used: set[str]) -> str:
    stem = f"{path.stem}.gradcam"
    name, k = f"{stem}.png", 2
    while name in used:
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    *,
    top_k: int = 3,
    tta: bool = False,
    explain_dir: str | os.PathLike | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> Iterator[FileResult]:
    """Classify every image under ``inputs``; yields one ``FileResult`` per file, in order.

    ``explain_dir``: also write a Grad-CAM overlay (for the top class) per image there.
    """
    if top_k < 1:
        raise UserInputError("--top-k must be at least 1")
    files, missing = collect_images(inputs)
    yield from missing
    if not files and not missing:
        raise UserInputError("no image files found in the given paths")
    out = Path(explain_dir) if explain_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with tqdm(
        total=len(files),
        desc="predicting",
        unit="img",
        dynamic_ncols=True,
        leave=False,
        disable=not progress or len(files) <= batch_size,
    ) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded: list[tuple[Path, np.ndarray, Image.Image | None]] = []
            for path in chunk:
                try:
                    picture = open_image(path)
                except ImageError as exc:
                    yield FileResult(str(path), error=str(exc))
                    continue
                # The picture is kept (small) only to draw the explanation on.
                small = picture.resize((EXPLAIN_SIZE, EXPLAIN_SIZE)) if out else None
                decoded.append((path, predictor.prepare(picture), small))
            bar.update(len(chunk))
            if not decoded:
                continue
            batch = np.stack([d[1] for d in decoded])
            probs = predictor.predict_proba(batch, tta=tta)
            explained = [None] * len(decoded)
            if out is not None:
                explained = _write_explanations(predictor, batch, probs, decoded, out, used)
            for (path, _, _), row, where in zip(decoded, probs, explained, strict=True):
                yield FileResult(str(path), top=predictor.top(row, top_k), explanation=where)


def _write_explanations(predictor, batch, probs, decoded, out: Path, used: set[str]) -> list[str]:
    from .gradcam import overlay

    maps = predictor.gradcam(batch, probs.argmax(1)).heatmaps
    written = []
    for (path, _, picture), heat in zip(decoded, maps, strict=True):
        target = out / _explain_name(path, used)
        overlay(picture, heat, EXPLAIN_SIZE).save(target)
        written.append(str(target))
    return written


def format_results(results: Sequence[FileResult], out_format: str = "table") -> str:
    """``table`` for people, ``json`` and ``csv`` for machines (failures included)."""
    if out_format == "json":
        entries = []
        for r in results:
            entry: dict = {"path": r.path}
            if r.ok:
                entry["predictions"] = [{"label": lab, "probability": p} for lab, p in r.top or []]
                if r.explanation:
                    entry["explanation"] = r.explanation
            else:
                entry["error"] = r.error
            entries.append(entry)
        return json.dumps(entries, indent=2) + "\n"
    if out_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "label", "probability", "error"])
        for r in results:
            if not r.ok:
                writer.writerow([r.path, "", "", "", r.error])
                continue
            for rank, (label, p) in enumerate(r.top or [], start=1):
                writer.writerow([r.path, rank, label, f"{p:.4f}", ""])
        return buffer.getvalue()
    if out_format != "table":
        raise UserInputError(f"unknown format {out_format!r}; choose table, json or csv")
    ok = [r for r in results if r.ok]
    if not ok:
        return ""
    k = max(len(r.top or []) for r in ok)
    cells = [[r.path, *(f"{lab} {p:.4f}" for lab, p in r.top or [])] for r in ok]
    header = ["image", "prediction", *(f"#{i}" for i in range(2, k + 1))]
    widths = [
        max(len(row[i]) if i < len(row) else 0 for row in [header, *cells]) for i in range(k + 1)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"
