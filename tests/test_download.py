import hashlib
import socket
import urllib.request

import pytest

from imageclf.data.download import download
from imageclf.errors import DataError


def test_download_verifies_md5_and_writes_atomically(tmp_path):
    payload = b"cifar" * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    dest = tmp_path / "out" / "cifar-10-python.tar.gz"
    got = download(dest, url=src.as_uri(), md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_md5_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "out" / "x.tar.gz"
    with pytest.raises(DataError, match="md5"):
        download(dest, url=src.as_uri(), md5="0" * 32, progress=False)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_offline_fails_fast_with_hint(tmp_path, monkeypatch):
    """Fast by construction, not by a clock: one attempt, with a connect timeout."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempts = []
    real_urlopen = urllib.request.urlopen

    def spy(url, *args, **kwargs):
        attempts.append(kwargs.get("timeout"))
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", spy)
    with pytest.raises(DataError, match="--data"):
        download(tmp_path / "x.tar.gz", url=f"http://127.0.0.1:{port}/x.tar.gz", progress=False)
    assert len(attempts) == 1 and attempts[0] is not None and 0 < attempts[0] <= 30
    assert not (tmp_path / "x.tar.gz").exists()
