"""imageclf: train, evaluate, explain and serve small-image CNN classifiers.

The public Python API (the CLI is built on exactly these)::

    run = imageclf.train(recipe="fast", data="images/", epochs=3)   # -> Run
    run = imageclf.resume("runs/fast-20260101-120000")              # -> Run
    result = imageclf.evaluate([run.bundle_path], "images/")        # -> EvalResult
    predictor = imageclf.Predictor.load(run.bundle_path)            # or .load(): bundled
    study = imageclf.tune(recipe="fast", data="images/", trials=12)  # -> TuneResult ([tune])
"""

from .evaluation import EvalResult, evaluate
from .prediction import Predictor
from .training import RECIPES, Run, TrainConfig, resume, train
from .tuning import TuneResult, tune
from .version import __version__

__all__ = [
    "RECIPES",
    "EvalResult",
    "Predictor",
    "Run",
    "TrainConfig",
    "TuneResult",
    "__version__",
    "evaluate",
    "resume",
    "train",
    "tune",
]
