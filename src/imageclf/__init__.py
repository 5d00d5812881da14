"""imageclf: train, evaluate, explain and serve small-image CNN classifiers."""

__version__ = "0.1.0"

from .predict import Predictor  # noqa: E402

__all__ = ["Predictor", "__version__"]
