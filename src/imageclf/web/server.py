"""``imageclf serve``: gunicorn in production, Flask's own server with ``--debug``.

The model files are checked once in the parent before any worker starts, so a bad
path (or models over ``--max-model-memory``) is one clear error line instead of a
crash loop of workers; the bytes checked are what every worker loads (``reload.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .models import MB, ModelSpec, parse_model_specs

log = logging.getLogger("imageclf.web")

# gevent workers with read deadlines (web/worker.py): a slow client costs a greenlet,
# not a worker, so /healthz stays answered while many trickle their requests in. The
# model is loaded once per worker and runs on a thread of its own there, merging the
# predictions that wait meanwhile into one pass (web/forward.py). A worker
# stuck for TIMEOUT_S is killed (the decode budget keeps requests far below that);
# workers are recycled after about MAX_REQUESTS requests (jittered so they do not all
# restart together) to cap any leak; IMAGECLF_MAX_REQUESTS overrides it (0 turns
# recycling off, e.g. to measure a leak).
WORKER_CLASS = "imageclf.web.worker.DeadlineGeventWorker"
TIMEOUT_S = 30
GRACEFUL_TIMEOUT_S = 10
MAX_REQUESTS = 2000
MAX_REQUESTS_JITTER = 200
# A request head must arrive within this; an idle kept-alive connection closes after it.
HEADER_TIMEOUT_S = 10
# Connections one worker holds at once. Each may buffer an upload (up to ~5 MB) while it
# arrives, so this also bounds that memory; more wait in the listen queue.
WORKER_CONNECTIONS = 100


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Split the cores between workers so that together they never oversubscribe."""
    return max(1, (cores or cpu_count()) // max(1, workers))


def check_models(
    specs: Sequence[ModelSpec],
    store: Path,
    *,
    batch: int,
    memory_limit_mb: float | None = None,
    threshold: float | None = None,
) -> list[str]:
    """Load every model once in the parent, state what each costs, and publish the
    bytes that were checked in ``store`` (what every worker then loads: reload.py).

    Raises ``BundleError`` for a model that cannot load and ``ModelMemoryError`` when
    together they exceed ``memory_limit_mb`` (one line each, exit 2). Returns one line
    per model for the log."""
    import torch

    from .model_store import ModelStore
    from .models import ModelSlot
    from .reload import Reloader

    torch.set_num_threads(1)  # a forked worker must never inherit a started OpenMP pool
    slots = {spec.name: ModelSlot(spec, default=i == 0) for i, spec in enumerate(specs)}
    reloader = Reloader(ModelStore(store), slots, batch=batch, memory_limit_mb=memory_limit_mb)
    lines = []
    for slot in slots.values():
        loaded = reloader.initial(slot)
        lines.append(
            f"model {slot.name}{' (default)' if slot.default else ''}: {slot.spec.source}, "
            f"version {loaded.version}, {loaded.cost.text()}"
        )
    if threshold is not None and not any(s.current.predictor.multi_label for s in slots.values()):
        raise UserInputError("--threshold applies to multi-label models; none is served")
    total = sum(s.current.cost.total_bytes for s in slots.values() if s.current) / MB
    limit = f" of --max-model-memory {memory_limit_mb:g} MB" if memory_limit_mb else ""
    lines.append(f"models need {total:.1f} MB in each worker{limit}")
    return lines


# Settings for which 0 means something (no wait) rather than nothing.
ZERO_ALLOWED = frozenset({"IMAGECLF_BATCH_WAIT_MS", "IMAGECLF_RELOAD_POLL_S"})


def limits_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The app's numeric limits (``DEFAULTS`` keys such as ``IMAGECLF_DECODE_SECONDS``)
    given as environment variables, converted to the default's type; a bad value is a
    one-line error before anything starts."""
    from . import DEFAULTS

    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        if not key.startswith("IMAGECLF_") or key not in environ:
            continue
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        try:
            value = type(default)(environ[key])
        except ValueError:
            raise UserInputError(f"{key} must be a number, got {environ[key]!r}") from None
        if value < 0 or (value == 0 and key not in ZERO_ALLOWED):
            raise UserInputError(f"{key} must be positive, got {environ[key]!r}")
        found[key] = value
    return found


def gunicorn_options(
    host: str, port: int, workers: int, access_log: bool = False, listen_fd: int | None = None
) -> dict[str, Any]:
    """The gunicorn settings ``serve`` uses (exposed for tests and docs).

    Access lines are off unless asked for: formatting one costs about a tenth of a
    request's CPU (benchmarks/serve_load.py), a front proxy usually logs requests
    anyway, and /metrics and the error log (with request ids) are always on.
    ``listen_fd``: a socket already listening (``reuse_port_socket``) instead of host:port."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if listen_fd is not None:
        bind = f"fd://{listen_fd}"
    max_requests = int(os.environ.get("IMAGECLF_MAX_REQUESTS", MAX_REQUESTS))
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "worker_connections": WORKER_CONNECTIONS,
        "keepalive": HEADER_TIMEOUT_S,
        "timeout": TIMEOUT_S,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "max_requests": max_requests,
        "max_requests_jitter": MAX_REQUESTS_JITTER if max_requests else 0,
        "preload_app": False,  # each worker builds its own app and model after the fork
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "imageclf",
        # gunicorn's control socket sits at one fixed path per user: a second instance
        # would take it over and stopping either would delete the other's. Not needed.
        "control_socket_disable": True,
    }


def reuse_port_socket(host: str, port: int, backlog: int = 2048) -> int:
    """A listening socket with SO_REUSEPORT, as a file descriptor for gunicorn's master.

    Several servers (e.g. two containers in one pod) then share one port and the kernel
    spreads connections between them, so one can restart while another answers. The
    master holds this socket for its whole life and its workers inherit it: gunicorn's own
    ``reuse_port`` gives each worker a socket of its own instead, closed whenever that
    worker is recycled, and with one worker the port refused connections until the next
    one started. Off by default, so a second server on a taken port stays an error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock.detach()  # gunicorn owns it now


def end_worker(server, worker) -> None:
    """gunicorn's last call in a worker: leave with the worker's own exit status but without
    interpreter teardown, where onnxruntime's thread pools threw from C++ destructors
    ("terminate called ... std::system_error", SIGABRT at every recycle and shutdown)."""
    exc = sys.exc_info()[1]  # the SystemExit gunicorn is ending the worker with
    code = exc.code if isinstance(exc, SystemExit) else (1 if exc else 0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def serve(
    model: str | os.PathLike | Sequence[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    threads: int | None = None,
    debug: bool = False,
    access_log: bool = False,
    reuse_port: bool = False,
    auth: dict[str, Any] | None = None,
    feedback: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Check the models, then serve until interrupted. ``model``: one file or several
    ``NAME=PATH`` (the first is the default); ``auth``: ``auth.server_settings`` (keys
    read once, here, so workers share quotas); ``feedback``: ``feedback_settings``;
    ``settings``: other ``DEFAULTS`` keys (batching, ``IMAGECLF_MAX_MODEL_MEMORY_MB``)."""
    from . import create_app

    values = [model] if isinstance(model, str | os.PathLike) else list(model or [])
    specs = parse_model_specs(values)
    limits = {**limits_from_env(), **(auth or {}), **(feedback or {}), **(settings or {})}
    limits["IMAGECLF_MODEL_STORE"] = store = _checked_store(specs, limits)
    if debug:
        app = create_app(models=specs, IMAGECLF_MODEL_LOADING="eager", **limits)
        try:
            app.run(host=host, port=port, debug=True)  # with the reloader
        finally:
            shutil.rmtree(store, ignore_errors=True)
        return

    from gunicorn.app.base import BaseApplication

    from .metrics import gunicorn_hooks, start_multiprocess_dir

    workers = workers or cpu_count()
    threads = threads or threads_per_worker(workers)
    # Before any worker forks: /metrics then sums every worker's counters.
    metrics_hooks = gunicorn_hooks(start_multiprocess_dir())
    listen_fd = reuse_port_socket(host, port) if reuse_port else None

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = gunicorn_options(host, port, workers, access_log, listen_fd)
            if auth:  # the access line's user field: the key's name, not a client's word
                from .auth import ACCESS_LOG_FORMAT

                options["access_log_format"] = ACCESS_LOG_FORMAT
            hooks = {**metrics_hooks, "worker_exit": end_worker}
            for key, value in {**options, **hooks}.items():
                self.cfg.set(key, value)

        def load(self):
            # Called in each worker after the fork: its own app, models and torch threads.
            return create_app(
                models=specs,
                IMAGECLF_MODEL_LOADING="eager",
                IMAGECLF_TORCH_THREADS=threads,
                **limits,
            )

    log.info(
        "serving %s on http://%s:%d with %d worker(s) x %d thread(s)",
        ", ".join(spec.name for spec in specs),
        host,
        port,
        workers,
        threads,
    )
    try:
        _run_master(Server())
    finally:  # the master leaves: nobody loads from the store any more
        shutil.rmtree(store, ignore_errors=True)


def _checked_store(specs: Sequence[ModelSpec], limits: dict[str, Any]) -> str:
    """The folder of checked versions every worker loads (web/reload.py), filled by
    ``check_models`` before any fork; removed again if a model is refused."""
    from . import DEFAULTS

    store = tempfile.mkdtemp(prefix="imageclf-models-")
    try:
        for line in check_models(
            specs,
            Path(store),
            batch=int(limits.get("IMAGECLF_MAX_BATCH", DEFAULTS["IMAGECLF_MAX_BATCH"])),
            memory_limit_mb=limits.get("IMAGECLF_MAX_MODEL_MEMORY_MB"),
            threshold=limits.get("IMAGECLF_THRESHOLD"),
        ):
            log.info("%s", line)
    except BaseException:
        shutil.rmtree(store, ignore_errors=True)
        raise
    return store


def _run_master(app) -> None:
    """gunicorn's ``BaseApplication.run`` with ``ModelArbiter`` as the master."""
    try:
        _model_arbiter()(app).run()
    except RuntimeError as exc:  # gunicorn's own way of saying it cannot start
        print(f"\nError: {exc}\n", file=sys.stderr)
        sys.exit(1)


def _model_arbiter():
    from gunicorn.arbiter import Arbiter

    class ModelArbiter(Arbiter):
        """gunicorn's master, where SIGHUP reloads the models in place: every worker
        checks its model files now (web/reload.py), the new version switched in beside
        the old, instead of gunicorn's restart of every worker (a broken file would
        have stopped the new workers from booting, and so the server)."""

        def handle_hup(self) -> None:
            self.log.info("SIGHUP: the workers check their model files")
            self.kill_workers(signal.SIGHUP)

    return ModelArbiter
