"""A tuning study's settings and storage: what is searched, where it lives, how it resumes.

The settings of a search are written to ``tune.json`` in its run folder, so ``--resume``
needs nothing else; the study itself lives in SQLite there or in a storage URL several
workers share, and every worker checks it searches the same space on the same data.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import socket
import time
import warnings
from pathlib import Path

from ..errors import UserInputError, import_extra
from ..fileio import read_json_file
from ..training.config import TrainConfig
from ..training.recipe_files import read_recipe_file
from ..training.recipes import RECIPES
from ..training.resolve import recipe_values, resolve
from .space import read_space_file

log = logging.getLogger("imageclf.tune")

SETTINGS_FILE = "tune.json"
PRUNERS = ("median", "halving", "none")
# Fields of a recipe that describe the run, not the recipe: never written to best.json.
RUN_FIELDS = {
    "recipe", "data", "split", "val_size", "subset", "image_size", "seed",
    "device", "precision", "threads", "eval_batch_size", "out", "user_set", "table",
}  # fmt: skip


def base_recipe(recipe: str) -> tuple[str, dict | None]:
    """The built-in recipe under ``recipe`` and the space a recipe file declares, if any."""
    recipe_values(recipe)  # an unknown name or a bad file fails here, clearly
    if recipe in RECIPES:
        return recipe, None
    doc = read_recipe_file(recipe)
    return doc["base"], doc.get("space")


def make_pruner(optuna, name: str, trials: int, epochs_cap: int = 8):
    if name == "median":
        # Compare from a quarter of the schedule on (the first epochs are noisy), once a
        # few trials have finished.
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(2, min(5, trials // 4)), n_warmup_steps=max(2, epochs_cap // 4)
        )
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserInputError(f"unknown pruner {name!r}; choose {', '.join(PRUNERS)}")


# What tune.json must hold for --resume to continue the study it describes.
SETTINGS_TYPES: dict[str, tuple[type, ...]] = {
    "recipe": (str,), "data": (str, type(None)), "storage": (str,), "study": (str,),
    "trials": (int,), "seed": (int,), "space": (dict, type(None)),
    "timeout": (int, float, type(None)), "pruner": (str,), "epochs": (int, type(None)),
    "subset": (int, type(None)), "split": (str, type(None)), "val_size": (int, type(None)),
    "device": (str, type(None)), "threads": (int, type(None)),
}  # fmt: skip


def _read_settings(path: Path) -> dict:
    """``tune.json``, checked: a corrupt or edited file is one clear error, not a traceback
    halfway through the study."""
    settings = read_json_file(path, "study settings")
    if not isinstance(settings, dict):
        raise UserInputError(f"{path} is not a study's settings (not a JSON object)")
    for key, types in SETTINGS_TYPES.items():
        value = settings.get(key)
        if key not in settings or not isinstance(value, types) or isinstance(value, bool):
            raise UserInputError(f"{path} is damaged: {key!r} is missing or has the wrong type")
    return settings


def load_settings(resume, **given) -> tuple[Path, dict]:
    """The study's settings: from the arguments, or from ``tune.json`` when resuming."""
    if resume is not None:
        run_dir = Path(resume)
        path = run_dir / SETTINGS_FILE
        if not path.is_file():
            raise UserInputError(f"nothing to resume: {path} does not exist")
        settings = _read_settings(path)
        for key in ("trials", "timeout", "device", "threads"):
            if given.get(key) is not None:
                settings[key] = given[key]
        return run_dir, settings
    run_dir = Path(given.pop("out") or Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / SETTINGS_FILE).exists():
        raise UserInputError(
            f"{run_dir} already holds a study; continue it with --resume {run_dir}"
        )
    settings = dict(given)
    settings["trials"] = settings["trials"] or 20
    for key in ("recipe", "data"):  # so --resume works from any directory
        value = settings[key]
        if value is not None and (key == "data" or Path(value).is_file()):
            settings[key] = str(Path(value).resolve())
    space = settings["space"]
    if isinstance(space, str | os.PathLike):
        settings["space"] = read_space_file(space)
    if settings["storage"] is None:
        settings["storage"] = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if settings["study"] is None:
        settings["study"] = f"tune-{Path(settings['recipe']).stem}"
    return run_dir, settings


# A worker that stops (killed, its machine lost) stops beating: after GRACE_S another
# worker fails its trial, and the trial runs again with the same settings.
HEARTBEAT_S, GRACE_S = 30, 120
CONNECT_TIMEOUT_S = 10  # an unreachable database server is one error, not a hang


def open_study(optuna, storage: str, name: str, pruner):
    """Create or join the study: (study, True when this call created it). Exactly one of
    several workers starting together creates it (the name is unique in the storage); the
    race of two creating one new database's tables is retried."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    for attempt in range(6):
        try:
            backend = _storage(optuna, storage)
            try:
                study = optuna.create_study(
                    storage=backend, study_name=name, direction="maximize", pruner=pruner
                )
                return study, True
            except optuna.exceptions.DuplicatedStudyError:
                return optuna.load_study(study_name=name, storage=backend, pruner=pruner), False
        except (ArgumentError, ValueError, ImportError) as exc:
            error = exc  # a malformed URL, an unreachable server, a missing driver: final
            break
        except SQLAlchemyError as exc:  # e.g. "table alembic_version already exists"
            error = exc
            time.sleep(0.5 * (attempt + 1))
    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", storage)  # never print a password
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserInputError(f"cannot open the study storage {shown}: {detail}")


def _storage(optuna, url: str):
    """The storage behind ``url``: SQLite (a file) or a database server (PostgreSQL is
    tested), with heartbeats so that a killed worker's trial runs again."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)  # ArgumentError: not a URL
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return url  # a memory database has one process: nothing to share or lock
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise ValueError(f"the folder {folder} does not exist")
        engine_kwargs: dict = {"connect_args": {"timeout": 60}}
    elif backend in ("postgresql", "postgres"):
        parsed, engine_kwargs = _postgresql(parsed)
        url = parsed.render_as_string(hide_password=False)
    else:
        engine_kwargs = {}
    stale = "heartbeat_stale_trial_callback"  # optuna 5; optuna 4 calls it failed_trial_callback
    if stale not in inspect.signature(optuna.storages.RDBStorage).parameters:
        stale = "failed_trial_callback"
    with warnings.catch_warnings():  # heartbeats are "experimental": not the user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S, **{stale: _requeue_stale},
        )  # fmt: skip
    if backend == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _postgresql(parsed):
    """psycopg (3) whatever SQLAlchemy's default driver, a bounded connect, and the server
    reached once up front: a wrong password or host is one final error, not six retries."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    if parsed.drivername in ("postgresql", "postgres"):  # postgres://: Heroku-style URLs
        import_extra("psycopg", "tune", "a PostgreSQL --storage")
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = (
        {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    )
    engine_kwargs = {"connect_args": connect_args, "pool_pre_ping": True}
    engine = create_engine(parsed, **engine_kwargs)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise ValueError(str(exc.orig or exc).strip().splitlines()[0]) from None
    finally:
        engine.dispose()
    return parsed, engine_kwargs


def _begin_immediate(engine) -> None:
    """SQLite's transactions take its write lock when they begin.

    SQLite ignores the row lock optuna asks for when a worker takes a queued trial (the
    baseline, a requeued one), so two workers could both read it as waiting and both run
    it, and the second to finish fails. Beginning every transaction IMMEDIATE makes the
    second worker wait for the first's commit and then see the trial taken.
    """
    from sqlalchemy import event

    def no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN is deferred

    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_implicit_begin)
    event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections opened before the listeners go


def check_same_study(study, record: dict, created: bool) -> bool:
    """Workers sharing a study must search the same space on the same data; True when
    this worker is the study's first (it wrote the record)."""
    existing = None if created else _wait_for_record(study)
    if existing is None:
        study.set_user_attr("imageclf", record)
        return True

    def same(key: str, value) -> bool:
        if key == "data":  # the same images may live at another path on another machine
            return (value or {}).get("fingerprint") == record["data"]["fingerprint"]
        return value == record.get(key)

    for key in ("base", "config", "space", "epochs_cap", "data", "split"):
        if not same(key, existing.get(key)):
            raise UserInputError(
                f"study {study.study_name!r} was created with a different {key} "
                f"({json.dumps(existing.get(key))[:120]}); use another --study name"
            )
    return False


def _wait_for_record(study, attempts: int = 50) -> dict | None:
    """The study's record; a worker that joined a new study in the moment between its
    creation and the creator's writing the record waits for it. A study that has trials
    and no record was made outside imageclf: nothing to wait for."""
    for _ in range(attempts):
        existing = study.user_attrs.get("imageclf")
        if existing is not None or study.get_trials(deepcopy=False):
            return existing
        time.sleep(0.1)
    return None


def mark_worker(trial) -> None:
    """Record which process runs ``trial``: a resume on the same machine then knows at
    once that a killed worker's trial is not running any more."""
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})


def requeue_interrupted(optuna, study) -> None:
    """Trials cut off by Ctrl-C (failed) or by a killed worker on this machine (left
    running) run again with the same settings on resume."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        worker = trial.user_attrs.get("worker")
        if isinstance(worker, dict) and _gone(worker):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            log.info("trial %d's worker (pid %s) is gone", trial.number, worker.get("pid"))
    trials = study.get_trials(deepcopy=False)
    done = set(study.user_attrs.get("requeued", []))  # studies of earlier versions
    done |= {t.user_attrs.get("requeued_from") for t in trials}
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    for trial in failed:
        if trial.number not in done and trial.params:
            _requeue(study, trial, "was interrupted")


def _gone(worker: dict) -> bool:
    """True when ``worker`` ran on this machine and its process has ended."""
    pid = worker.get("pid")
    if worker.get("host") != socket.gethostname() or not isinstance(pid, int) or pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    return False


def _requeue_stale(study, trial) -> None:
    """Optuna's call for a trial whose worker stopped beating (any worker makes it)."""
    _requeue(study, trial, "lost its worker")


def _requeue(study, trial, why: str) -> None:
    """Queue ``trial``'s settings again; the copy remembers it (and a baseline stays one)."""
    attrs = {"requeued_from": trial.number}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    log.info("trial %d %s: queued again with the same settings", trial.number, why)


def recipe_changes(cfg: TrainConfig, base: str) -> dict:
    """The recipe fields where ``cfg`` differs from the built-in ``base``."""
    reference = resolve(base).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in RUN_FIELDS and reference[k] != v}
