"""Hot reload: a changed model file, SIGHUP or ``POST /api/v1/models/NAME/reload``
loads the new version beside the old, checks it, then switches; the old keeps serving
when the new one is refused.

One folder of checked versions (``model_store.ModelStore``) is shared by every process of a server:
``serve`` creates it in the master and publishes the versions it checked at startup.
A worker that sees its source file change takes the model's file lock, reads the bytes
once, hashes them, and (unless that version is already published or was refused)
writes them to the store, loads them from there, checks them (a probe picture, the
same classes unless ``--allow-class-change``, the memory limit), then publishes the
version (the ``current`` file, replaced atomically) or records why it was refused. The
other workers find the version already decided under the lock; every worker loads what
``current`` names, so all serve the same checked version, and a worker started later
(recycling) loads it too, never a broken file that replaced it.

Each worker looks every ``TICK_S``: ``current`` always (a small read), the source file's
``stat`` every ``poll_s`` (``serve --reload-poll-s``; 0: only SIGHUP and the API). The
work runs on a thread of its own, so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BundleError, ImageclfError, UserInputError
from ..models.bundle import missing_model_message
from .forward import gevent_is_patched
from .model_store import ModelStore
from .models import MB, Loaded, ModelSlot, content_version, load_checked

log = logging.getLogger("imageclf.web")

RELOAD_POLL_S = 1.0
TICK_S = 0.25
OUTCOMES = ("switched", "failed", "refused")  # the metric's label values


class ReloadRefusedError(UserInputError):
    """A new version loads but may not replace the old (classes, memory): HTTP 409."""

    http_status = 409


class ModelMemoryError(UserInputError):
    """The models do not fit in ``--max-model-memory``."""


class _Requested:
    """Set by a worker's SIGHUP handler; the next tick checks every model file."""

    pending = False


requested = _Requested()


def request_reload(signum: int | None = None, frame: Any = None) -> None:
    """A signal handler: nothing but a flag (the tick does the work)."""
    requested.pending = True


@dataclass(frozen=True)
class ReloadResult:
    """What a check decided: ``outcome`` is switched, unchanged, failed or refused."""

    model: str
    outcome: str
    version: str  # what serves now
    candidate: str  # the version the file holds
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_source(slot: ModelSlot) -> bytes:
    """The model file's bytes, read once; a missing or unreadable file (or a FIFO,
    never opened) is one ``BundleError`` line."""
    path = slot.spec.source
    if not path.is_file():
        raise BundleError(missing_model_message(path))
    try:
        return path.read_bytes()
    except OSError:
        raise BundleError(missing_model_message(path)) from None


# ---------------------------------------------------------------- checking, switching
class Reloader:
    """Loads, checks, publishes and switches the versions of a service's models."""

    def __init__(
        self,
        store: ModelStore,
        slots: dict[str, ModelSlot],
        *,
        batch: int,
        memory_limit_mb: float | None = None,
        allow_class_change: bool = False,
        on_outcome: Callable[[str, str], None] | None = None,
        on_switch: Callable[[Loaded], None] | None = None,
    ) -> None:
        self.store, self.slots, self.batch = store, slots, batch
        self.memory_limit = None if memory_limit_mb is None else int(memory_limit_mb * MB)
        self.allow_class_change = allow_class_change
        self.on_outcome = on_outcome  # the metrics' reload counter
        self.on_switch = on_switch  # the metrics' model gauges
        # What happened, told to the callbacks by ``flush`` on the caller's own thread:
        # under gevent the work runs on another OS thread, where the metrics' locks
        # (gevent's, once patched) must not be taken.
        self._events: list[tuple[str, Any]] = []
        self._sync_failed: dict[str, str] = {}

    def initial(self, slot: ModelSlot) -> Loaded:
        """The version ``current`` names, or (first process) the source file's, published."""
        with self.store.locked(slot.name):
            version = self.store.current(slot.name)
            if version is None:
                slot.seen = slot.look()  # before reading: a change meanwhile is seen later
                data = read_source(slot)
                version = content_version(data)
                path = self.store.stage(slot.name, version, slot.suffix, data)
                loaded = self._load(slot, path, version)
                self._check_memory(slot, loaded)
                self.store.publish(slot.name, version, slot.suffix)
            else:
                path = self.store.snapshot(slot.name, version, slot.suffix)
                loaded = load_checked(slot.name, path, version, self.batch)
        self._switch(slot, loaded)
        return loaded

    def check(self, slot: ModelSlot) -> ReloadResult:
        """Read the source file once; publish and switch to it if it is new and passes."""
        serving = slot.current.version if slot.current else ""
        with self.store.locked(slot.name):
            slot.seen = slot.look()
            try:
                data = read_source(slot)
            except ImageclfError as exc:
                return self._refused(slot, "", "failed", str(exc), record=False)
            version = content_version(data)
            if version == self.store.current(slot.name):
                return ReloadResult(slot.name, "unchanged", version, version)
            refused = self.store.refused(slot.name)
            if refused and refused[0] == version:  # decided already (another worker)
                return ReloadResult(slot.name, refused[1], serving, version, refused[2])
            path = self.store.stage(slot.name, version, slot.suffix, data)
            del data
            try:
                loaded = self._load(slot, path, version)
                self._admit(slot, loaded)
            except ReloadRefusedError as exc:
                path.unlink(missing_ok=True)
                return self._refused(slot, version, "refused", str(exc))
            except ImageclfError as exc:
                path.unlink(missing_ok=True)
                return self._refused(slot, version, "failed", str(exc))
            except Exception as exc:  # a bug, or torch's own: the old version keeps serving
                log.exception("model %s: unexpected error loading version %s", slot.name, version)
                path.unlink(missing_ok=True)
                return self._refused(slot, version, "failed", f"unexpected error: {exc}")
            self.store.publish(slot.name, version, slot.suffix)
        self._switch(slot, loaded)
        self._count(slot.name, "switched")
        return ReloadResult(slot.name, "switched", version, version)

    def sync(self, slot: ModelSlot) -> None:
        """Serve what ``current`` names, if another process published a new version."""
        version = self.store.current(slot.name)
        if version is None or (slot.current and slot.current.version == version):
            return
        if self._sync_failed.get(slot.name) == version:
            return
        path = self.store.snapshot(slot.name, version, slot.suffix)
        try:
            loaded = load_checked(slot.name, path, version, self.batch)
        except Exception as exc:  # e.g. pruned meanwhile: the next version will come
            self._sync_failed[slot.name] = version
            log.error("model %s: cannot load published version %s: %s", slot.name, version, exc)
            return
        self._switch(slot, loaded)

    def _load(self, slot: ModelSlot, path: Path, version: str) -> Loaded:
        """``load_checked`` on our copy; its errors name the user's file, not the copy."""
        try:
            return load_checked(slot.name, path, version, self.batch)
        except ImageclfError as exc:
            message = str(exc).replace(str(path), str(slot.spec.source))
            raise type(exc)(message) from None

    # ------------------------------------------------------------ rules
    def _admit(self, slot: ModelSlot, loaded: Loaded) -> None:
        old = slot.current
        if old and not self.allow_class_change:
            before, after = old.predictor.classes, loaded.predictor.classes
            if before != after:
                raise ReloadRefusedError(
                    f"its classes differ from the served version's ({len(after)} vs "
                    f"{len(before)}: {', '.join(after[:5])}...); serve --allow-class-change "
                    "accepts that"
                )
        self._check_memory(slot, loaded, ReloadRefusedError)

    def _check_memory(self, slot: ModelSlot, loaded: Loaded, error=ModelMemoryError) -> None:
        if self.memory_limit is None:
            return
        others = sum(
            s.current.cost.total_bytes for s in self.slots.values() if s is not slot and s.current
        )
        total = others + loaded.cost.total_bytes
        if total > self.memory_limit:
            raise error(
                f"model {slot.name} needs {loaded.cost.text()}; with the other models that "
                f"is {total / MB:.1f} MB, over --max-model-memory {self.memory_limit / MB:g} MB"
            )

    def _refused(
        self, slot: ModelSlot, version: str, outcome: str, reason: str, record: bool = True
    ) -> ReloadResult:
        serving = slot.current.version if slot.current else ""
        if record:
            self.store.refuse(slot.name, version, outcome, reason)
        log.error(
            "model %s: version %s %s, still serving %s: %s",
            slot.name,
            version or "?",
            outcome,
            serving,
            reason,
        )
        self._count(slot.name, outcome)
        return ReloadResult(slot.name, outcome, serving, version, reason)

    def _switch(self, slot: ModelSlot, loaded: Loaded) -> None:
        old = slot.switch(loaded)
        self._sync_failed.pop(slot.name, None)  # a version may come back (A, B, A)
        if old is not None:
            log.info(
                "model %s: now serving version %s (was %s) in process %d, %s",
                slot.name,
                loaded.version,
                old.version,
                os.getpid(),
                loaded.cost.text(),
            )
        self._events.append(("switch", loaded))

    def _count(self, name: str, outcome: str) -> None:
        self._events.append(("outcome", (name, outcome)))

    def flush(self) -> None:
        """Tell the callbacks what happened since the last flush (metrics)."""
        events, self._events = self._events, []
        for kind, value in events:
            if kind == "switch" and self.on_switch:
                self.on_switch(value)
            elif kind == "outcome" and self.on_outcome:
                self.on_outcome(*value)


# ---------------------------------------------------------------- the watcher
class Watcher:
    """Runs the reloader's work one job at a time on a thread of its own: the ticks
    (every ``TICK_S``) and the API's reloads. Stops when the service is gone."""

    def __init__(self, reloader: Reloader, poll_s: float = RELOAD_POLL_S) -> None:
        self.reloader = reloader
        self.poll_s = poll_s
        self._polled = 0.0
        self._lock = threading.Lock()
        self._pool = None

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on the reload thread (gevent), or under its lock."""
        if gevent_is_patched():
            if self._pool is None:
                from gevent.threadpool import ThreadPool

                self._pool = ThreadPool(1)
            try:
                return self._pool.apply(function, args)
            finally:
                self.reloader.flush()  # back on the event loop's thread
        with self._lock:
            try:
                return function(*args)
            finally:
                self.reloader.flush()

    def tick(self) -> None:
        forced, requested.pending = requested.pending, False
        due = self.poll_s > 0 and time.monotonic() - self._polled >= self.poll_s
        if due:
            self._polled = time.monotonic()
        for slot in list(self.reloader.slots.values()):
            if slot.current is None:
                continue
            if forced or (due and self._changed(slot)):
                self.reloader.check(slot)
            self.reloader.sync(slot)

    def _changed(self, slot: ModelSlot) -> bool:
        """The file looks different from when it was last read (a worker that loaded
        the published copy has not read it: it checks once)."""
        now = slot.look()
        return now is not None and now != slot.seen

    def start(self) -> None:
        """Tick in the background; the loop holds the watcher only weakly."""
        ref = weakref.ref(self)
        if gevent_is_patched():
            import gevent

            gevent.spawn(_loop, ref, gevent.sleep)
        else:
            thread = threading.Thread(
                target=_loop, args=(ref, time.sleep), name="imageclf-reload", daemon=True
            )
            thread.start()


def _loop(ref: Callable[[], Watcher | None], sleep: Callable[[float], None]) -> None:
    while True:
        sleep(TICK_S)
        watcher = ref()
        if watcher is None:
            return
        try:
            watcher.run(watcher.tick)
        except Exception:  # never let the watcher die: the next tick tries again
            log.exception("model reload check failed")
        del watcher
