"""Training: ``train(config)`` / ``resume(run_dir)`` -> ``Run``.

loop.py       the driver (``train``, ``resume``) and its steps: one epoch, the head
              fit, the pure ``after_epoch`` decision, the checkpoint
job.py        ``Job``: one run in progress (config, data, parts, state), what each
              step is handed
start.py      how a run starts (``Scratch``, ``Pretrained``, ``FromBundle``): the
              config it implies, the model and its normalisation, the optimiser
parts.py      what a run is built from: ``TrainData``, ``Parts``; per-class counts
              and class weights
finish.py     the end of a run: best weights, val/test scored, calibration, bundle
finetune.py   transfer mechanics: head fit by L-BFGS on embeddings, layer groups,
              discriminative learning rates
optim.py      optimisers, schedule, lookahead
adapt.py      small data: batch, epochs and translations adapted, with the reason
compute.py    FLOPs spent and the share of the machine's peak reached
runs.py       the run folder: state, checkpoints, history, ``Run``
config.py     ``TrainConfig``; recipes.py the built-in recipes; recipe_files.py
              recipe JSON files; resolve.py recipe + overrides -> ``TrainConfig``
"""

from .config import TrainConfig
from .loop import resume, train
from .recipes import RECIPES
from .runs import Run

__all__ = ["RECIPES", "Run", "TrainConfig", "resume", "train"]
