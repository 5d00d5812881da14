"""benchmarks/gate_rules.py: the rules it compares are the ones it names, scored as said.

Its table is the evidence for dividing the gate's votes by ImageNet's prior, so the
"plain product" row must be exactly the rule served before, and the scores must count
what their headers say.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gate_rules

from imageclf.prediction.gate import VOTE_FLOOR, combine


def test_the_plain_product_row_is_the_rule_served_before():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=20).astype(np.float32)
    votes = rng.dirichlet(np.ones(5), size=20)[:, :4]
    prior = np.array([0.118, 0.002, 0.003, 0.059])
    before = probs * (votes + VOTE_FLOOR)
    before /= before.sum(1, keepdims=True)
    plain = gate_rules.RULES["plain product"](probs, votes, prior)
    np.testing.assert_allclose(plain, before, rtol=1e-5)
    assert gate_rules.RULES["product over ImageNet's prior (served)"] is combine
    np.testing.assert_array_equal(gate_rules.RULES[gate_rules.ALONE](probs, votes, prior), probs)


def test_scores_count_per_class_worst_class_and_doubted_right_answers():
    classes = ["a", "b", "c"]
    probs = np.array([[0.9, 0.1, 0], [0.4, 0.35, 0.25], [0.2, 0.8, 0], [0.6, 0.4, 0]])
    truth = np.array([0, 0, 1, 1])
    scored = gate_rules.score(probs, truth, classes, unsure_below=0.5)
    assert scored["accuracy"] == 0.75
    assert scored["per_class"]["a"] == 1.0 and scored["per_class"]["b"] == 0.5
    assert np.isnan(scored["per_class"]["c"])  # no photo of c: not its worst class
    assert scored["worst_class"] == 0.5
    assert scored["right_not_sure"] == pytest.approx(1 / 3)  # 0.4 of three right answers
