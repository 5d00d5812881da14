"""The folder of checked model versions that every process of one server shares
(``web/reload.py`` decides what goes in; ``serve`` creates it in the master).

Content-addressed copies (``<name>/<version><suffix>``), so a version is written once
and never changes under a reader; ``current`` names the published version (replaced
atomically), ``refused`` the last refused one and why, ``history`` the versions kept;
``lock`` serialises the processes' decisions about one model.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

from ..fileio import write_text_atomic

# Published versions kept on disk per model: the current one and the one before, which
# a worker may still be loading when the next is published.
KEEP_VERSIONS = 2


class ModelStore:
    """``ROOT/<name>/<version><suffix>`` files, ``current`` (the published version),
    ``refused`` (the last refused version and why) and a lock file per model."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def private(cls) -> ModelStore:
        """A store for one process (tests, ``--debug``), removed with it."""
        store = cls(Path(tempfile.mkdtemp(prefix="imageclf-models-")))
        weakref.finalize(store, shutil.rmtree, store.root, True)
        return store

    def _folder(self, name: str) -> Path:
        """The model's folder, made when first written (reading writes nothing)."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        with open(self._folder(name) / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def current(self, name: str) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            return (self.root / name / "current").read_text().strip() or None
        return None

    def refused(self, name: str) -> tuple[str, str, str] | None:
        """(version, outcome, reason) of the last refused version, if any."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            version, outcome, reason = (self.root / name / "refused").read_text().split("\t", 2)
            return version, outcome, reason
        return None

    def snapshot(self, name: str, version: str, suffix: str) -> Path:
        return self.root / name / f"{version}{suffix}"

    def stage(self, name: str, version: str, suffix: str, data: bytes) -> Path:
        path = self._folder(name) / f"{version}{suffix}"
        if not path.is_file():
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_bytes(data)
            staging.replace(path)
        return path

    def publish(self, name: str, version: str, suffix: str) -> None:
        folder = self._folder(name)
        history = folder / "history"
        older = [v for v in _lines(history) if v != version][-(KEEP_VERSIONS - 1) :]
        write_text_atomic(history, "\n".join([*older, version]) + "\n")
        write_text_atomic(folder / "current", version + "\n")
        keep = {f"{v}{suffix}" for v in [*older, version]}
        for path in folder.glob(f"*{suffix}"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def refuse(self, name: str, version: str, outcome: str, reason: str) -> None:
        write_text_atomic(self._folder(name) / "refused", f"{version}\t{outcome}\t{reason}")


def _lines(path: Path) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return [line for line in path.read_text().split() if line]
    return []
