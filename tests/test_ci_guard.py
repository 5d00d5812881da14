"""The CI guard in conftest.py: under CI=true a skip of any kind fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips_in_body():
    pytest.skip("no browser here")

@pytest.mark.skipif(True, reason="no GPU here")
def test_skipped_by_marker():
    pass
"""

SKIPPED_MODULE = """
import pytest

pytest.importorskip("a_module_that_is_not_installed")

def test_never_collected():
    pass
"""


def _pytest(target: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    # Our conftest as a plugin; the temporary folder as rootdir, so no other config applies.
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
               "-q", "-rfEs", "--rootdir", str(target.parent), str(target)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("suite")
    (folder / "test_skipping.py").write_text(SKIPPING)
    (folder / "test_optional_module.py").write_text(SKIPPED_MODULE)
    return {"tests": folder / "test_skipping.py", "module": folder / "test_optional_module.py"}


def test_skips_are_only_reported_outside_ci(suite):
    result = _pytest(suite["tests"].parent, ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped" in result.stdout


def test_a_skipped_test_fails_under_ci(suite):
    result = _pytest(suite["tests"], ci="true")
    assert result.returncode == 1, result.stdout
    # pytest.skip() in the body fails the call; a skipif marker fails the setup (an error).
    assert result.stdout.splitlines()[-1].startswith("1 failed, 1 passed, 1 error in")
    for reason in ("no browser here", "no GPU here"):
        assert f"CI=true runs every test, but this one skipped: Skipped: {reason}" in result.stdout


def test_a_module_level_importorskip_fails_under_ci(suite):
    result = _pytest(suite["module"], ci="true")
    assert result.returncode != 0, result.stdout
    assert "CI=true runs every test, but this one skipped" in result.stdout
    assert "a_module_that_is_not_installed" in result.stdout
