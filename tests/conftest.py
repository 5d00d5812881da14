"""Shared fixtures: an isolated cache, the shared archive, a tiny model bundle.

Plain helper functions live in helpers.py (``from helpers import ...``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_ARCHIVE, make_tiny_bundle


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache; the shared archive's cache is kept per session."""
    monkeypatch.setenv("IMAGECLF_HOME", str(tmp_path_factory.getbasetemp() / "imageclf-home"))


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    """The CIFAR-10 JPEG mirror; skips locally without it, fails in CI (IMAGECLF_REQUIRE_DATA=1)."""
    if SHARED_ARCHIVE.is_file():
        return SHARED_ARCHIVE
    message = f"shared dataset not found at {SHARED_ARCHIVE}"
    if os.environ.get("IMAGECLF_REQUIRE_DATA") == "1":
        pytest.fail(message + " (IMAGECLF_REQUIRE_DATA=1 makes this a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


@pytest.fixture()
def keep_torch_threads():
    """Restore torch's thread count after a test that runs ``serve`` (which sets it to 1)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
