"""Fetch the official CIFAR-10 python archive: progress bar, md5 check, atomic write."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError
from ..fileio import atomic_write

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
# Short enough that an offline machine fails in seconds, long enough for a slow link.
CONNECT_TIMEOUT_S = 10.0

_OFFLINE_HINT = (
    "if this machine has no internet, fetch cifar-10-python.tar.gz elsewhere and pass "
    "--data PATH (the archive, its extracted folder, or any image folder/archive)"
)


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    dest: str | os.PathLike,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
    *,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    The file appears at ``dest`` only once complete and verified, so an
    interrupted download never leaves a half file that looks valid.
    """
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / CIFAR10_FILENAME
    if dest.exists() and (md5 is None or md5sum(dest) == md5):
        return dest
    try:
        response = urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url} ({reason}); {_OFFLINE_HINT}") from None
    total = int(response.headers.get("Content-Length") or 0) or None
    digest = hashlib.md5()
    try:
        with (
            response,
            atomic_write(dest) as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {dest.name}",
                disable=not progress,
            ) as bar,
        ):
            while block := response.read(1 << 16):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
            if md5 is not None and digest.hexdigest() != md5:
                raise DataError(
                    f"downloaded file from {url} has md5 {digest.hexdigest()}, expected {md5}; "
                    "nothing was saved, try again"
                )
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise DataError(f"download of {url} failed ({exc}); {_OFFLINE_HINT}") from None
    return dest
