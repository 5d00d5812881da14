"""benchmarks/gate_latency.py: every configuration runs, each in its own process, and
its table's rows say which is which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gate_latency.py"


@pytest.mark.slow
def test_each_configuration_is_measured(tmp_path):
    out = tmp_path / "gate_latency.json"
    cmd = [sys.executable, str(SCRIPT), "--requests", "3", "--rounds", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    names = [row["configuration"] for row in rows]
    assert names[0].startswith("model alone (no gate)") and names[-1].endswith("(shipped)")
    assert len(names) == 4 and all(0 < row["p50_ms"] <= row["p90_ms"] for row in rows)
    assert "| model and gate, traced, oneDNN Graph (shipped) |" in done.stdout


def test_a_model_without_a_gate_is_refused(tmp_path):
    from helpers import make_tiny_bundle

    model = make_tiny_bundle(tmp_path / "plain.safetensors")
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--out", str(tmp_path / "x.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "has no gate" in done.stderr
