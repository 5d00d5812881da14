"""Figures draw outside strings as text: a class or file name with dollar signs is not
mathtext (``$x^$`` or ``$$`` used to fail the whole report)."""

from __future__ import annotations

import numpy as np
import pytest

from imageclf import plots

HOSTILE_NAMES = ["$x^$", "a $\\frac$ b", "$$", "cost $5 and $"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_confusion_heatmap_draws_dollar_names_as_written(name):
    fig = plots.confusion_heatmap(np.eye(2), [name, "dog"], normalized=True, title=name)
    assert plots.to_png_bytes(fig).startswith(b"\x89PNG")
    shown = fig.axes[0].get_xticklabels()[0]
    assert shown.get_text() == name.replace("$", r"\$")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_grid_and_reliability_draw_dollar_names(name):
    grid = plots.image_grid([np.zeros((8, 8, 3), np.uint8)], [name], [False], title=name)
    assert plots.to_png_bytes(grid).startswith(b"\x89PNG")
    bins = [{"lower": 0.0, "upper": 1.0, "count": 3, "accuracy": 0.5, "confidence": 0.6}]
    diagram = plots.reliability_diagram(bins, 0.1, title=name)
    assert plots.to_png_bytes(diagram).startswith(b"\x89PNG")
    curves = plots.training_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], name)
    assert plots.to_png_bytes(curves).startswith(b"\x89PNG")


def test_literal_keeps_plain_text_and_none():
    assert plots.literal("cat") == "cat"
    assert plots.literal(None) is None
