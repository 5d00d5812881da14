"""``imageclf serve``: the upload page and the JSON API behind gunicorn."""

from __future__ import annotations

import click


@click.command("serve")
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
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads for each worker's forward passes (default: cores / workers).",
)
@click.option("--debug", is_flag=True, help="Flask's development server with reloading.")
@click.option(
    "--access-log",
    is_flag=True,
    help="One line per request on stdout (off by default: it costs about a tenth of a "
    "request's CPU, and a front proxy usually logs requests).",
)
def serve_command(
    model: str | None,
    host: str,
    port: int,
    workers: int | None,
    threads: int | None,
    debug: bool,
    access_log: bool,
) -> None:
    """Serve the upload page and the JSON API (gunicorn). MODEL may be a .safetensors
    bundle or an exported .onnx file."""
    from ..web.server import serve

    serve(
        model,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        debug=debug,
        access_log=access_log,
    )
