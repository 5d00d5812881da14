"""Exceptions whose messages are written for the person at the keyboard.

The CLI prints ``str(error)`` as one line and exits with ``exit_code``; the web
app maps ``http_status`` to its response. Anything else escaping is a bug.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class ImageclfError(Exception):
    """A failure explained to the user (exit code 1)."""

    exit_code = 1
    http_status = 500


class UserInputError(ImageclfError):
    """The user gave us something we cannot use (exit code 2, HTTP 400)."""

    exit_code = 2
    http_status = 400


class MissingExtraError(UserInputError):
    """An optional extra is needed for this (exit code 2). Every missing extra is said the
    same way: what needs it, and the one command that installs it."""

    def __init__(self, purpose: str, extra: str) -> None:
        install = f"pip install 'imageclf[{extra}]'"
        super().__init__(f"{purpose} needs the optional {extra} extra: {install}")
        self.extra = extra


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``module``, or a ``MissingExtraError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(purpose, extra) from None


class TrainingDiverged(UserInputError):
    """The loss became NaN/inf: bad settings, not a bug (the tuner prunes such trials)."""


class ExportError(ImageclfError):
    """The exported model does not reproduce the original (exit code 1)."""


class DataError(UserInputError):
    """A dataset is missing, malformed, or fails its checksum."""


class BundleError(UserInputError):
    """A model file is missing, truncated, tampered with, or not ours."""


class ModelOutputError(BundleError):
    """The model answered with something that is not logits for these pictures (NaN or
    infinity, too few rows): the model file is broken, and no answer is made up from it
    (HTTP 422: this request cannot be answered; exit code 2)."""

    http_status = 422


class RetryLaterError(UserInputError):
    """One client (or key) asked for more than its share: HTTP 429, and ``Retry-After``
    says in how many seconds it may ask again."""

    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ImageError(UserInputError):
    """One image cannot be used; ``http_status`` says why in HTTP terms."""


class InvalidImageError(ImageError):
    """Bytes that are not a decodable image (truncated, corrupt, random)."""

    http_status = 400


class UnsupportedFormatError(ImageError):
    """A real file in a format outside the allowlist (PDF, SVG, TIFF...)."""

    http_status = 415


class ImageTooLargeError(ImageError):
    """Dimensions beyond our pixel or aspect-ratio policy (decompression bombs)."""

    http_status = 422


class DecodeBudgetError(ImageError):
    """A request would spend more than its budget decoding (pixels in total or seconds):
    the request as a whole is too large, like an over-long body (HTTP 413)."""

    http_status = 413
