"""Training: ``train(config)`` / ``resume(run_dir)`` -> ``Run``.

The driver and the per-epoch steps are in ``loop.py``; what a run is built from in
``parts.py``, how it starts (scratch, pretrained weights, a bundle) in ``start.py``, its
end in ``finish.py``; ``TrainConfig`` in ``config.py``, the built-in recipes in
``recipes.py``.
"""

from .config import TrainConfig
from .loop import resume, train
from .recipes import RECIPES
from .runs import Run

__all__ = ["RECIPES", "Run", "TrainConfig", "resume", "train"]
