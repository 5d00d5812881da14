"""Model architectures by name: the seed CNNs, the fast net and EfficientNet-Lite0/1/2."""

from . import efficientnet, fast, seeds  # noqa: F401  (registers the architectures)
from .protocol import TrainingHooks, training_hooks
from .registry import build, names, register

__all__ = ["TrainingHooks", "build", "names", "register", "training_hooks"]
