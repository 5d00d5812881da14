"""imageclf: train, evaluate, explain and serve small-image CNN classifiers.

The public Python API (the CLI is built on exactly these)::

    run = imageclf.train(recipe="fast", data="images/", epochs=3)   # -> Run
    run = imageclf.resume("runs/fast-20260101-120000")              # -> Run
    result = imageclf.evaluate([run.bundle_path], "images/")        # -> EvalResult
    predictor = imageclf.Predictor.load(run.bundle_path)            # or .load(): bundled
    study = imageclf.tune(recipe="fast", data="images/", trials=12)  # -> TuneResult ([tune])
"""

from __future__ import annotations

import importlib

from .version import __version__

# Imported on first use (PEP 562): `import imageclf.cli` stays free of torch, so the CLI
# starts fast and a Ctrl-C in its first seconds reaches main()'s handler (one line,
# exit 130) instead of interrupting an import with a traceback.
_WHERE = {
    "EvalResult": "evaluation",
    "evaluate": "evaluation",
    "Predictor": "prediction",
    "RECIPES": "training",
    "Run": "training",
    "TrainConfig": "training",
    "resume": "training",
    "train": "training",
    "TuneResult": "tuning",
    "tune": "tuning",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'imageclf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


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
