"""``imageclf serve``: the upload page and the JSON API behind gunicorn."""

from __future__ import annotations

import click

from .keys import keys_command


@click.group("serve", invoke_without_command=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="[NAME=]PATH",
    # click.Path splits IMAGECLF_MODEL on ':' as PATH is split, so a path may hold spaces
    type=click.Path(),
    envvar="IMAGECLF_MODEL",
    show_envvar=True,
    help="Model bundle (.safetensors) or an exported .onnx file (default: the bundled model). "
    "Repeat as NAME=PATH to serve several: the first is the default, each also at "
    "/api/v1/models/NAME/predict (NAME: a-z, 0-9, '_', '-', at most 32); in "
    "IMAGECLF_MODEL separated by ':'.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="IMAGECLF_HOST",
    show_envvar=True,
    help="Interface to listen on (0.0.0.0 for every interface).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="IMAGECLF_PORT",
    show_envvar=True,
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    envvar="IMAGECLF_WORKERS",
    show_envvar=True,
    help="gunicorn worker processes (default: one per core).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    envvar="IMAGECLF_THREADS",
    show_envvar=True,
    help="torch threads for each worker's forward passes (default: cores / workers).",
)
@click.option("--debug", is_flag=True, help="Flask's development server with reloading.")
@click.option(
    "--access-log",
    is_flag=True,
    envvar="IMAGECLF_ACCESS_LOG",
    show_envvar=True,
    help="One line per request on stdout (off by default: it costs about a tenth of a "
    "request's CPU, and a front proxy usually logs requests).",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar="IMAGECLF_REUSE_PORT",
    show_envvar=True,
    help="SO_REUSEPORT: several servers (e.g. containers in one pod) listen on one port and "
    "the kernel spreads connections between them, so one can restart while others answer.",
)
@click.option(
    "--api-keys",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="IMAGECLF_API_KEYS_FILE",
    show_envvar=True,
    help="Key file: the API (/api/v1) then needs 'Authorization: Bearer KEY'. Make keys "
    "with 'imageclf serve keys add NAME --file FILE' (docs/limits.md).",
)
@click.option(
    "--key-rate",
    default=None,
    envvar="IMAGECLF_KEY_RATE",
    show_envvar=True,
    help="Quota of each key whose line sets none: requests per second, or N/min, N/h, "
    "shared by all workers (default: unlimited).",
)
@click.option(
    "--key-burst",
    type=click.IntRange(min=1),
    default=None,
    envvar="IMAGECLF_KEY_BURST",
    show_envvar=True,
    help="Requests a key may make at once before its rate applies (default: one second's worth).",
)
@click.option(
    "--protect-page",
    is_flag=True,
    envvar="IMAGECLF_PROTECT_PAGE",
    show_envvar=True,
    help="The upload page needs a key too: a browser asks for it (any user name, the key "
    "as the password).",
)
@click.option(
    "--protect-metrics",
    is_flag=True,
    envvar="IMAGECLF_PROTECT_METRICS",
    show_envvar=True,
    help="/metrics needs a key too (/healthz and /readyz stay open).",
)
@click.option(
    "--feedback-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="IMAGECLF_FEEDBACK_DIR",
    show_envvar=True,
    help="Let users answer 'right' / 'wrong, it is X' on the result page and the API; "
    "their pictures are kept in DIR/<class>/ (what 'train --data DIR' reads) with a log "
    "DIR/feedback.csv. Off by default (docs/limits.md: quota and rate).",
)
@click.option(
    "--feedback-quota-mb",
    type=click.FloatRange(min=1),
    default=None,
    envvar="IMAGECLF_FEEDBACK_QUOTA_MB",
    show_envvar=True,
    help="Disk space the feedback folder may use (default: 1024 MB); 507 when full.",
)
@click.option(
    "--feedback-per-minute",
    type=click.FloatRange(min=0.01),
    default=None,
    envvar="IMAGECLF_FEEDBACK_PER_MINUTE",
    show_envvar=True,
    help="Answers one client address may send per minute in each worker (default: 30, "
    "bursts of 10); 429 beyond.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 512),
    default=None,
    envvar="IMAGECLF_MAX_BATCH",
    show_envvar=True,
    help="Most pictures one merged forward pass takes, from requests waiting at once "
    "(default: 32; docs/benchmarks.md measures it).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0, 1000),
    default=None,
    envvar="IMAGECLF_BATCH_WAIT_MS",
    show_envvar=True,
    help="How long a pass that is not full waits for more requests to join it "
    "(default: 0, it goes at once).",
)
@click.option(
    "--max-model-memory",
    type=click.FloatRange(min=1),
    default=None,
    envvar="IMAGECLF_MAX_MODEL_MEMORY_MB",
    show_envvar=True,
    help="MB all models may take in each worker (parameters + working memory, as logged at "
    "startup): serve refuses to start, and a reload is refused, beyond it.",
)
@click.option(
    "--reload-poll-s",
    type=click.FloatRange(min=0),
    default=None,
    envvar="IMAGECLF_RELOAD_POLL_S",
    show_envvar=True,
    help="How often each worker looks for a changed model file (default: 1 s; 0: only "
    "SIGHUP and POST /api/v1/models/NAME/reload).",
)
@click.option(
    "--allow-class-change",
    is_flag=True,
    envvar="IMAGECLF_ALLOW_CLASS_CHANGE",
    show_envvar=True,
    help="A reloaded model may have other classes than the one it replaces (refused by default).",
)
@click.option(
    "--allow-reload",
    type=click.Choice(["loopback", "any", "off"]),
    default=None,
    envvar="IMAGECLF_ALLOW_RELOAD",
    show_envvar=True,
    help="Without --api-keys, who may POST /api/v1/models/NAME/reload (default: loopback, "
    "clients on this machine connecting directly). With keys: any valid key.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    envvar="IMAGECLF_THRESHOLD",
    show_envvar=True,
    help="Multi-label models: one threshold for every label instead of each label's own "
    "(a request's own threshold field still wins).",
)
def serve_command(
    models: tuple[str, ...],
    host: str,
    port: int,
    workers: int | None,
    threads: int | None,
    debug: bool,
    access_log: bool,
    reuse_port: bool,
    api_keys: str | None,
    key_rate: str | None,
    key_burst: int | None,
    protect_page: bool,
    protect_metrics: bool,
    feedback_dir: str | None,
    feedback_quota_mb: float | None,
    feedback_per_minute: float | None,
    max_batch: int | None,
    batch_wait_ms: float | None,
    max_model_memory: float | None,
    reload_poll_s: float | None,
    allow_class_change: bool,
    allow_reload: str | None,
    threshold: float | None,
) -> None:
    """Serve the upload page and the JSON API (gunicorn). MODEL may be a .safetensors
    bundle or an exported .onnx file; several as NAME=PATH. A changed model file, SIGHUP
    or POST /api/v1/models/NAME/reload loads the new version, checks it and switches
    without a restart (docs/limits.md)."""
    if click.get_current_context().invoked_subcommand:
        return  # imageclf serve keys ...
    from ..web.auth import server_settings
    from ..web.feedback import feedback_settings
    from ..web.server import serve

    auth = server_settings(api_keys, key_rate, key_burst, protect_page, protect_metrics)
    feedback = feedback_settings(feedback_dir, feedback_quota_mb, feedback_per_minute)
    settings = {
        key: value
        for key, value in (
            ("IMAGECLF_MAX_BATCH", max_batch),
            ("IMAGECLF_BATCH_WAIT_MS", batch_wait_ms),
            ("IMAGECLF_MAX_MODEL_MEMORY_MB", max_model_memory),
            ("IMAGECLF_RELOAD_POLL_S", reload_poll_s),
            ("IMAGECLF_ALLOW_CLASS_CHANGE", allow_class_change or None),
            ("IMAGECLF_ALLOW_RELOAD", allow_reload),
            ("IMAGECLF_THRESHOLD", threshold),
        )
        if value is not None
    }
    serve(
        models[0] if len(models) == 1 else list(models),
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        debug=debug,
        access_log=access_log,
        reuse_port=reuse_port,
        auth=auth,
        feedback=feedback,
        settings=settings,
    )


serve_command.add_command(keys_command)
