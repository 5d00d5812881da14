"""imageclf: train, evaluate, explain and serve small-image CNN classifiers."""

__version__ = "0.1.0"

from .predict import Predictor

__all__ = ["Predictor", "__version__"]
