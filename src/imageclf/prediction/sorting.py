"""``imageclf predict --sort-into DIR``: each classified picture copied (or symlinked,
``--link``) into ``DIR/<label>/``, or into ``DIR/unsure/`` when the model is not sure
which class, or whether it is one of them (``Predictor.unsure``/``outside``: the page's
and the API's rules).

Nothing is ever overwritten or moved: a name already taken gets ``-2``, ``-3``... before
its extension, and the target is created exclusively (``O_EXCL``), so two pictures named
alike, a second run into the same folder, or another process writing there cannot
replace a file. The originals are only read. Unreadable pictures go into no folder; the
command names them on stderr and counts them in the summary. A multi-label model's
picture is copied into each of its labels' folders, or into ``DIR/no-label/`` when no
label reaches its threshold (unsure does not apply: several labels or none is an answer).

Labels come from the bundle (``models.class_names`` already refuses control characters),
but a bundle is untrusted: folder names go through ``models.naming.safe_component`` (no
separators, no ``..``), and labels that would share a folder (``Cat`` and ``cat`` on a
case-insensitive disk, or a class named ``unsure``) get distinct ones.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..fileio import printable
from ..models.naming import safe_component
from .files import FileResult

UNSURE = "unsure"
NO_LABEL = "no-label"  # a multi-label model's picture with no label above its threshold
MAX_SUFFIX = 100_000  # "photo-2.jpg" ... a name this far taken is a loop, not a folder


def folder_names(classes: list[str], unsure: str = UNSURE) -> tuple[dict[str, str], str]:
    """label -> folder name, and the ``unsure`` folder's name (a multi-label model's:
    ``no-label``): each a safe single path component, distinct from the others even on a
    case-insensitive file system."""
    taken: set[str] = set()

    def claim(wanted: str) -> str:
        name, k = wanted, 2
        while name.casefold() in taken:
            name, k = f"{wanted}-{k}", k + 1
        taken.add(name.casefold())
        return name

    taken.add(unsure)  # the unsure folder keeps its name: a class called "unsure" moves
    folders = {label: claim(safe_component(label)) for label in classes}
    return folders, unsure


def _numbered(name: str, k: int) -> str:
    """``photo.jpg`` -> ``photo-2.jpg`` (``k`` = 2): the number before the extension."""
    path = Path(name)
    return f"{path.stem}-{k}{path.suffix}"


def place_file(source: Path, folder: Path, link: bool) -> Path:
    """Copy (or symlink) ``source`` into ``folder`` under its own name, numbered when
    taken; the target is created exclusively, so nothing there is ever replaced."""
    for k in range(1, MAX_SUFFIX):
        target = folder / (source.name if k == 1 else _numbered(source.name, k))
        try:
            if link:
                os.symlink(source.resolve(), target)
            else:
                _copy_exclusive(source, target)
        except FileExistsError:
            continue
        return target
    raise OSError(f"{MAX_SUFFIX} names like {source.name} are already taken in {folder}")


def _copy_exclusive(source: Path, target: Path) -> None:
    """``shutil.copy2`` into a file that must not exist yet; a partial copy is removed."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            shutil.copyfileobj(src, dst)
        except BaseException:
            dst.close()
            target.unlink(missing_ok=True)
            raise
    shutil.copystat(source, target)


def check_inputs(root: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """An input folder inside (or equal to) the target would be sorted into itself:
    refused. The target inside an input folder is fine: it is left out of the listing."""
    target = Path(os.path.realpath(root))
    for item in inputs:
        if Path(item).is_dir() and Path(os.path.realpath(item)).is_relative_to(target):
            raise UserInputError(
                f"--sort-into {printable(root)} holds the input folder "
                f"{printable(item)}: choose a folder outside the pictures, or a new "
                "one among them"
            )


@dataclass
class Sorter:
    """Where each picture goes, and how many went where (for the summary)."""

    root: Path
    folders: dict[str, str]
    unsure_folder: str
    link: bool = False
    counts: Counter = field(default_factory=Counter)  # files written per folder
    failed: int = 0
    done: int = 0  # pictures sorted (a multi-label picture may fill several folders)

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        classes: list[str],
        link: bool = False,
        inputs: Sequence[str | os.PathLike] = (),
        multi_label: bool = False,
    ) -> Sorter:
        """The sorter for ``root`` (created if missing; a file there is refused), checked
        against the ``inputs`` it will sort (``check_inputs``) before anything is made."""
        root = Path(root)
        check_inputs(root, inputs)
        if root.exists() and not root.is_dir():
            raise UserInputError(f"--sort-into {printable(root)}: exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(
                f"--sort-into {printable(root)}: cannot create it ({exc.strerror or exc})"
            ) from None
        folders, unsure = folder_names(classes, NO_LABEL if multi_label else UNSURE)
        return cls(root, folders, unsure, link)

    def place(self, result: FileResult) -> FileResult:
        """Copy or link one classified picture; a failure to write is the file's error
        (the original is untouched). Unreadable pictures are only counted."""
        if not result.ok or not result.top:
            self.failed += 1
            return result
        if result.labels is not None:  # multi-label: a copy per label, or the no-label folder
            targets = [self.folders[label] for label, _, _ in result.labels] or [self.unsure_folder]
        elif result.unsure or result.outside:
            targets = [self.unsure_folder]
        else:
            targets = [self.folders[result.top[0][0]]]
        placed = []
        try:
            for folder in targets:
                (self.root / folder).mkdir(exist_ok=True)
                placed.append(str(place_file(Path(result.path), self.root / folder, self.link)))
        except OSError as exc:
            self.failed += 1
            result.error = f"classified but not sorted: {exc.strerror or exc}"
            result.sorted_to = placed or None
            return result
        result.sorted_to = placed if result.labels is not None else placed[0]
        self.counts.update(targets)
        self.done += 1
        return result

    def summary(self) -> str:
        """Counts per folder (labels that needed another folder name say so)."""
        done = self.done
        how = "symlinks" if self.link else "copies"
        lines = [f"sorted {done} of {done + self.failed} pictures into {printable(self.root)} "
                 f"({how}):"]  # fmt: skip
        label_of = {folder: label for label, folder in self.folders.items()}
        order = [*self.folders.values(), self.unsure_folder]
        width = max(len(printable(f)) for f in order)
        for folder in order:
            if self.counts[folder]:
                note = ""
                if folder in label_of and label_of[folder] != folder:
                    note = f"  (label {printable(label_of[folder])})"
                lines.append(f"  {printable(folder):<{width}} {self.counts[folder]:>6}{note}")
        if self.failed:
            lines.append(f"  not sorted (named above): {self.failed}")
        return "\n".join(lines) + "\n"
