"""Where imageclf keeps downloads and caches (``IMAGECLF_HOME`` overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root for downloads and the decoded-dataset cache."""
    env = os.environ.get("IMAGECLF_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imageclf"


def cache_dir() -> Path:
    return home() / "datasets"


def default_cifar10_path() -> Path:
    return home() / "cifar-10-python.tar.gz"
