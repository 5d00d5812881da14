"""The ``imageclf`` group (its global options) and ``main``, the console script.

Errors meant for the user become one line on stderr and exit code 2 (bad input)
or 1 (failure); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from ..allocator import keep_freed_memory
from ..errors import ImageclfError
from ..fileio import printable
from ..version import __version__
from .data import data_command
from .evaluate import evaluate_command
from .export import export_command
from .feedback import feedback_command
from .gate import gate_command
from .info import info_command
from .logs import configure_logging
from .lr_find import lr_find_command
from .predict import predict_command
from .serve import serve_command
from .train import train_command
from .tune import tune_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imageclf")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="IMAGECLF_LOG_FORMAT",
    show_envvar=True,
    help="json: one JSON object per log line, for machines.",
)
@click.pass_context
def cli(ctx: click.Context, quiet: bool, log_format: str) -> None:
    """Train, evaluate, explain and serve small-image CNN classifiers."""
    ctx.obj = {"progress": not quiet and log_format == "text"}
    configure_logging(quiet, log_format)


for command in (
    data_command, train_command, tune_command, info_command, evaluate_command,
    predict_command, export_command, gate_command, serve_command, feedback_command,
    lr_find_command,
):  # fmt: skip
    cli.add_command(command)


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # before any tensor: see allocator.py
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
        click.echo(f"imageclf: error: {printable(str(exc))}", err=True)  # one safe line
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
