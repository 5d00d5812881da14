"""imageclf: train, evaluate, explain and serve small-image CNN classifiers.

The public Python API (the CLI is built on exactly these)::

    run = imageclf.train(recipe="fast", data="images/", epochs=3)   # -> Run
    run = imageclf.resume("runs/fast-20260101-120000")              # -> Run
    result = imageclf.evaluate([run.bundle_path], "images/")        # -> EvalResult
    predictor = imageclf.Predictor.load(run.bundle_path)            # or .load(): bundled
    study = imageclf.tune(recipe="fast", data="images/", trials=12)  # -> TuneResult ([tune])
"""

__version__ = "0.1.0"

from .evaluation import EvalResult, evaluate
from .predict import Predictor
from .recipes import RECIPES, TrainConfig
from .runs import Run
from .training import resume, train
from .tuning import TuneResult, tune

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
