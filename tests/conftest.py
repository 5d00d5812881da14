"""Shared fixtures: an isolated cache, the shared archive, a tiny model bundle.

Plain helper functions live in helpers.py (``from helpers import ...``). Two hooks:
tests that use the shared archive carry the ``shared_data`` marker (``-m "not
shared_data"`` leaves them out), and under ``CI=true`` a skipped test is a failure,
so a missing extra, browser or dataset can never make CI quietly test less.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_ARCHIVE, SHARED_REALPHOTOS, make_tiny_bundle


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_reason(longrepr) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)


def _skip_is_failure_in_ci(report):
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true runs every test, but this one skipped: {_skip_reason(report.longrepr)}"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _skip_is_failure_in_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module-level ``importorskip`` skips a whole file at collection time."""
    return _skip_is_failure_in_ci((yield))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"shared_archive", "realphotos_dev"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache; the shared archive's cache is kept per session."""
    monkeypatch.setenv("IMAGECLF_HOME", str(tmp_path_factory.getbasetemp() / "imageclf-home"))


def _shared(path: Path) -> Path:
    """A shared dataset; skips locally without it, fails in CI (IMAGECLF_REQUIRE_DATA=1)."""
    if path.exists():
        return path
    message = f"shared dataset not found at {path}"
    if os.environ.get("IMAGECLF_REQUIRE_DATA") == "1":
        pytest.fail(message + " (IMAGECLF_REQUIRE_DATA=1 makes this a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    """The CIFAR-10 JPEG mirror."""
    return _shared(SHARED_ARCHIVE)


@pytest.fixture(scope="session")
def realphotos_dev() -> Path:
    """The shared development set of real photos (classes/ and others/)."""
    return _shared(SHARED_REALPHOTOS)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.safetensors")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The web app on a tiny model, loaded eagerly, one per test module (the hostile-input
    files share it); a module that needs other settings defines its own ``app``."""
    from imageclf.web import create_app

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("hostile") / "tiny.safetensors")
    # The hostile files decode costly pictures from one client on purpose; the per-client
    # share of decoding time has its own tests (test_web_decode_share.py).
    return create_app(
        bundle,
        TESTING=True,
        IMAGECLF_MODEL_LOADING="eager",
        IMAGECLF_CLIENT_DECODE_SECONDS=1e9,
    )


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture()
def keep_torch_threads():
    """Restore torch's thread count after a test that runs ``serve`` (which sets it to 1)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
