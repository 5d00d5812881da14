"""The layout rules of an image-folder dataset, read from paths alone (nothing decoded).

``ROOT/<class>/<image>``, or ``ROOT/train/<class>/<image>`` with optional
``ROOT/{val,valid,validation}/<class>/*`` and ``ROOT/test/<class>/*``; hidden files and
OS litter are ignored, a wrapping top folder (an archive's) is stripped. Training
(``folders.assemble_folder``) and ``imageclf data inspect`` both read a source through
``scan_layout``, so what inspect reports is what training will see. A layout that
cannot be trained on is one ``DataError`` per problem, naming the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DataError, InvalidImageError, UserInputError
from ..fileio import printable, read_file_capped
from ..imaging import IMAGE_EXTENSIONS, MAX_FILE_BYTES
from ..models.class_names import check_class_name, check_class_names
from .dataset import TEST, TRAIN, VAL

# Folder names recognised as a source's own splits (ROOT/<split>/<class>/<image>).
PARTITIONS = {"train": TRAIN, "test": TEST, "val": VAL, "valid": VAL, "validation": VAL}
# Hidden files and OS litter that appear inside class folders and archives.
_IGNORED_PARTS = ("__MACOSX", "Thumbs.db", "desktop.ini")
# How many names a "skipped N files" message lists.
SHOW_NAMES = 5

# (parts of the path below the root, payload, name as listed)
ImageEntry = tuple[tuple[str, ...], object, str]


def summarize_names(names: list[str]) -> str:
    """The first ``SHOW_NAMES`` names (safe to print), and how many more there are."""
    shown = ", ".join(printable(n) for n in names[:SHOW_NAMES])
    return shown + (f" and {len(names) - SHOW_NAMES} more" if len(names) > SHOW_NAMES else "")


def read_payload(payload: Path | bytes) -> bytes:
    """The bytes of a ``list_entries`` payload. A file is read the way ``predict`` reads
    one (``read_file_capped`` at ``MAX_FILE_BYTES``: size first, FIFOs and devices refused
    without blocking), so a link to /dev/zero or a 30 GB sparse file named like a picture
    is an ``InvalidImageError`` that the readers skip and name, never a hang."""
    if not isinstance(payload, Path):
        return payload
    try:
        return read_file_capped(payload, MAX_FILE_BYTES)
    except UserInputError as exc:
        raise InvalidImageError(str(exc)) from None


def check_classes(classes: list[str], source: str) -> None:
    """Class names a model bundle can store (``models.class_names``, the rule the bundle
    applies), checked as soon as the classes are known: a 220-character or tab-holding
    folder name used to train to the end and then fail to save. One ``DataError``
    naming the first bad class."""
    for name in classes:
        try:
            check_class_name(name)
        except ValueError as exc:
            shown = printable(name if len(name) <= 60 else name[:60] + "…")
            raise DataError(
                f"{source}: class '{shown}' ({len(name)} characters) cannot be a class name: "
                f"{exc}; rename it"
            ) from None
    try:
        check_class_names(list(classes))
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_PARTS for p in parts)


@dataclass
class FolderLayout:
    """What a folder or archive holds, worked out from paths alone (nothing decoded)."""

    images: list[ImageEntry]  # (parts below root, payload, name)
    classes: list[str]
    partitioned: bool  # ROOT/<split>/<class>/* rather than ROOT/<class>/*
    partition_folders: dict[str, str]  # "val" -> the folder that holds it ("validation")
    not_images: list[str]  # files skipped because their extension is not an image's

    def partition_of(self, parts: tuple[str, ...]) -> int:
        return PARTITIONS[parts[0]] if self.partitioned else TRAIN


def scan_layout(entries: list[tuple[str, object]], source: str) -> FolderLayout:
    """Classes and partitions from the paths of ``entries``; a DataError for a layout
    that cannot be trained on (one error per problem, naming the folder)."""
    files, dirs = [], []
    for name, payload in entries:
        parts = PurePosixPath(name).parts
        if not parts or _ignored(parts):
            continue
        (dirs if payload is None else files).append((parts, payload, name))
    images, not_images = [], []
    for f in files:
        if PurePosixPath(f[0][-1]).suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            not_images.append(f[2])
    if not images:
        raise DataError(f"{source} contains no image files")
    # Strip top-level folders shared by every file (an archive's wrapping folder).
    prefix = 0
    while (
        all(len(p) > prefix + 2 for p, _, _ in images)
        and len({p[prefix] for p, _, _ in images}) == 1
    ):
        prefix += 1
    images = [(p[prefix:], x, n) for p, x, n in images]
    dirs = [d[prefix:] for d, _, _ in dirs if len(d) > prefix]
    depths = {len(p) for p, _, _ in images}
    tops = {p[0] for p, _, _ in images}
    if depths == {3} and tops <= set(PARTITIONS):
        partitioned = True
    elif depths == {2}:
        partitioned = False
    else:
        raise DataError(
            f"{source}: expected ROOT/<class>/<image> or ROOT/{{train,val,test}}/<class>/<image>, "
            f"found files at depths {sorted(depths)} (e.g. {'/'.join(images[0][0])})"
        )
    folders: dict[str, str] = {}
    if partitioned:
        for top in sorted(tops):
            kind = {TRAIN: "train", VAL: "val", TEST: "test"}[PARTITIONS[top]]
            if kind in folders:
                raise DataError(
                    f"{source}: both {folders[kind]}/ and {top}/ hold validation images; keep one"
                )
            folders[kind] = top
    classes = _classes(images, dirs, partitioned, source)
    check_classes(classes, source)
    return FolderLayout(images, classes, partitioned, folders, not_images)


def _classes(
    images: list[ImageEntry], dirs: list[tuple[str, ...]], partitioned: bool, source: str
) -> list[str]:
    if not partitioned:
        found = {p[0] for p, _, _ in images}
        empty = sorted({d[0] for d in dirs if len(d) == 1} - found)
        if empty:
            raise DataError(f"{source}: class folder(s) with no images: {', '.join(empty)}")
        classes = sorted(found)
    else:
        per_part: dict[str, set[str]] = {}
        for p, _, _ in images:
            per_part.setdefault(p[0], set()).add(p[1])
        if "train" not in per_part:
            others = "/, ".join(sorted(per_part))
            raise DataError(f"{source}: has {others}/ but no train/ folder of images")
        empty = sorted(
            f"{d[0]}/{d[1]}" for d in dirs if len(d) == 2 and d[1] not in per_part.get(d[0], set())
        )
        if empty:
            raise DataError(f"{source}: class folder(s) with no images: {', '.join(empty)}")
        classes = sorted(per_part["train"])
        for part, found in per_part.items():
            if found != set(classes):
                missing = sorted(set(classes) - found) or sorted(found - set(classes))
                raise DataError(
                    f"{source}: {part}/ and train/ have different classes "
                    f"(mismatch: {', '.join(missing)})"
                )
    if len(classes) < 2:
        raise DataError(f"{source}: need at least 2 class folders, found {len(classes)}")
    return classes
