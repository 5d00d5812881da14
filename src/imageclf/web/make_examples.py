"""Pick the example images shown on the upload page from the CIFAR-10 test set.

Run once; the output is committed (a few 32x32 JPEGs):
``python -m imageclf.web.make_examples /path/to/cifar10-jpeg.tar.gz``.
The archive holds ``test/<class>/NNNN.jpg``; the first file of each chosen class is
copied byte for byte (no re-encoding), named ``<class>.jpg``.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

CLASSES = ("airplane", "automobile", "cat", "frog", "horse", "ship")
OUT = Path(__file__).parent / "static" / "examples"


def extract(archive: str | Path, out: Path = OUT, classes: tuple[str, ...] = CLASSES) -> list[Path]:
    """Copy the lowest-numbered test image of each class into ``out``."""
    chosen: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member in sorted(members, key=lambda m: m.name):
            parts = Path(member.name).parts
            if len(parts) == 3 and parts[0] == "test" and parts[1] in classes:
                chosen.setdefault(parts[1], member)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in classes:
            if name in chosen:
                handle = tar.extractfile(chosen[name])
                if handle is not None:
                    target = out / f"{name}.jpg"
                    target.write_bytes(handle.read())
                    written.append(target)
    return written


if __name__ == "__main__":
    for path in extract(sys.argv[1]):
        print(path)
