"""notebooks/walkthrough.ipynb: stored without outputs, public API only, and it runs.

CI executes it top to bottom (nbclient, a real Jupyter kernel) on a 2,000-image
subset of the shared CIFAR-10 mirror, so the walkthrough cannot rot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def _code(nb) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def test_stored_without_outputs():
    """Outputs hold images and local paths: git keeps the notebook stripped."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert "attachments" not in cell
    assert "widgets" not in nb.metadata


def test_uses_only_the_public_api():
    code = _code(nbformat.read(NOTEBOOK, as_version=4))
    private = re.findall(r"imageclf[\w.]*\._(?!_)\w+|from imageclf[\w.]* import [^\n]*\b_\w+", code)
    assert private == []
    assert "imageclf.train(" in code and "imageclf.evaluate(" in code
    assert "imageclf.Predictor.load(" in code and "create_app(" in code


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.timeout(3600)  # a whole notebook; each cell has its own 30-minute limit
def test_walkthrough_runs_top_to_bottom(shared_archive, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("IMAGECLF_NOTEBOOK_DATA", str(shared_archive))
    monkeypatch.setenv("IMAGECLF_NOTEBOOK_SUBSET", "2000")
    monkeypatch.setenv("IMAGECLF_NOTEBOOK_EPOCHS", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=1800,  # per cell: training takes minutes on a quiet 2-core machine, more if busy
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # a cell that raises fails the test with its traceback
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # what it showed, for a look afterwards

    def outputs(kind: str) -> list:
        return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o]

    text = "".join(o.get("text", "") for o in outputs("text"))
    assert "seed-b  test accuracy" in text and "fast    test accuracy" in text
    assert "precision" in text and "macro avg" in text  # the classification report
    assert '"label"' in text and "serving http://127.0.0.1:" in text  # the API answered
    pngs = [o for o in outputs("data") if "image/png" in o["data"]]
    assert len(pngs) >= 7  # sample, 2 curves, heatmap, predictions, Grad-CAM, own picture
    assert (tmp_path / "walkthrough-runs" / "fast" / "model.safetensors").is_file()
