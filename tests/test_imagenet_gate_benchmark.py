"""benchmarks/imagenet_gate.py's learnt map: which ImageNet classes become which class.

Its table argues for the written map over a learnt one, so the learning rule is checked
where its answer is known: pure, big ImageNet classes are kept, shared or tiny ones not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import imagenet_gate


def test_learnt_map_keeps_pure_big_classes_only():
    probs = np.zeros((4, 1000))
    labels = np.array([0, 0, 1, 1])
    probs[:2, 5] = 0.8  # class 0's pictures: ImageNet class 5
    probs[2:, 7] = 0.8  # class 1's: ImageNet class 7
    probs[:, 9] = 0.1999  # everyone's a little 9: not pure
    probs[0, 11] = 0.0001  # pure, but too small a share of class 0's mass
    mapping = imagenet_gate.learn_map(probs, labels, 2, purity=0.6, share=0.002)
    assert mapping == {5: 0, 7: 1}
    votes = imagenet_gate.votes(probs, mapping, 2)
    np.testing.assert_allclose(votes, [[0.8, 0], [0.8, 0], [0, 0.8], [0, 0.8]])


def test_written_map_is_the_gate_commands_map_turned_around():
    from imageclf.data.cifar import CIFAR10_CLASSES
    from imageclf.prediction.gate import read_map

    classes = list(CIFAR10_CLASSES)
    path = Path(imagenet_gate.__file__).parents[1] / "src/imageclf/models/imagenet_to_cifar10.json"
    mapping = imagenet_gate.written_map(path, classes)
    assert len(mapping) == 226 and mapping[30] == classes.index("frog")
    groups = read_map(None, classes)
    assert {j: classes.index(c) for c, v in groups.items() for j in v} == mapping
