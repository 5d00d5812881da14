"""Hyperparameter search on Optuna (the optional ``[tune]`` extra, imported lazily):
``tune(...)`` -> ``TuneResult``. The trial loop is ``tuner.py``, the study's storage and
settings ``study.py``, the results ``results.py``, the search spaces ``space.py``."""

from .results import TuneResult
from .tuner import tune

__all__ = ["TuneResult", "tune"]
