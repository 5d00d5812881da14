"""notebooks/walkthrough.ipynb: public API only, offline on a sample it draws itself,
stored executed with small outputs that are still current, and it runs.

The stored outputs are what a reader sees on GitHub before running anything, so they
must describe today's package: the bundled model as its metadata says (never a claim
typed into the text), numbers from the current code (the kept epoch, evaluate agreeing
with training). CI executes the notebook top to bottom with no network.

Refresh the stored outputs after a change that shows in them (this test says which):
``jupyter execute --inplace notebooks/walkthrough.ipynb`` (its runs land in
notebooks/walkthrough-runs/, which git ignores).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imageclf import Predictor

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
MAX_BYTES = 300_000  # outputs kept, pictures small: git stays light


def _code(nb) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb, "text"))


def _stored():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_uses_only_the_public_api_and_no_download():
    nb = _stored()
    code = _code(nb)
    private = re.findall(r"imageclf[\w.]*\._(?!_)\w+|from imageclf[\w.]* import [^\n]*\b_\w+", code)
    assert private == []
    assert "imageclf.train(" in code and "imageclf.evaluate(" in code
    assert "imageclf.Predictor.load(" in code and "create_app(" in code
    # Offline by default: the sample is drawn in the notebook, nothing shared is required.
    assert "draw_sample(" in code and "shared" not in code and "download" not in code
    # What the bundled model is comes from its metadata, not from prose.
    assert "Predictor.load()" in code and ".metadata" in code
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert not re.search(r"bundled model[^.]*\b(is|was) (the )?`?(fast|best|balanced)", prose)


def test_stored_executed_with_small_outputs():
    nb = _stored()
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
    assert not [o for o in _outputs(nb, "ename")]  # no cell failed
    for cell in nb.cells:
        assert "attachments" not in cell
    assert "widgets" not in nb.metadata
    pngs = [o for o in _outputs(nb, "data") if "image/png" in o["data"]]
    assert len(pngs) >= 7  # sample, 2 curves, heatmap, predictions, Grad-CAM, own picture
    assert all(len(o["data"]["image/png"]) < 60_000 for o in pngs)  # base64 characters


def test_stored_outputs_are_current():
    """What the stored outputs say matches the package as it is now."""
    text = _text(_stored())
    meta = Predictor.load().metadata
    assert f"bundled model: {meta.name}, {meta.architecture} at {meta.input_size} px" in text
    assert f"test accuracy {meta.metrics['test']['accuracy']:.1%}" in text
    assert "fast` recipe trained on" not in text and "170 MB" not in text
    assert re.search(r"fast +test accuracy .* kept epoch \d+ of \d+", text)
    right = re.search(r"evaluate: (\d+) of (\d+) right; training said (\d+) of (\d+)", text)
    assert right and right.group(1, 2) == right.group(3, 4)
    assert "estimate: about " in text  # train's overall estimate, as it prints it now


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_walkthrough_runs_offline(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    # Any attempt at the network fails at once (a dead proxy); the notebook's own server
    # on 127.0.0.1 stays reachable.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("IMAGECLF_NOTEBOOK_DATA", "IMAGECLF_NOTEBOOK_SUBSET", "IMAGECLF_NOTEBOOK_PICTURE"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=900,  # per cell: training takes well under a minute on a quiet 2-core machine
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # a cell that raises fails the test with its traceback
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # what it showed, for a look afterwards
    text = _text(nb)
    assert "seed-b  test accuracy" in text and "fast    test accuracy" in text
    assert "precision" in text and "macro avg" in text  # the classification report
    right = re.search(r"evaluate: (\d+) of (\d+) right; training said (\d+) of (\d+)", text)
    assert right and right.group(1, 2) == right.group(3, 4)
    assert '"label"' in text and "serving http://127.0.0.1:" in text  # the API answered
    pngs = [o for o in _outputs(nb, "data") if "image/png" in o["data"]]
    assert len(pngs) >= 7
    assert (tmp_path / "walkthrough-runs" / "fast" / "model.safetensors").is_file()
    assert (tmp_path / "walkthrough-runs" / "sample" / "train").is_dir()
