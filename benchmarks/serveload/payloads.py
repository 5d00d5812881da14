"""What the benchmark sends: the model (bundled, a tiny random one, or a given path) and
pre-built raw HTTP requests, so the load generator does as little work as it can."""

from __future__ import annotations

import uuid
from pathlib import Path

HOST = "127.0.0.1"


def tiny_bundle(folder: Path) -> Path:
    """The same random-weight 10-class seed-a bundle the tests use."""
    import torch

    from imageclf.models import build
    from imageclf.models.bundle import save_bundle

    torch.manual_seed(0)
    model = build("seed-a", num_classes=10, input_size=32)
    return save_bundle(
        folder / "tiny.safetensors",
        model.state_dict(),
        {
            "name": "tiny-seed-a",
            "architecture": "seed-a",
            "arch_kwargs": {},
            "classes": [f"class{i}" for i in range(10)],
            "input_size": 32,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        },
    )


def resolve_model(name: str | None, scratch: Path) -> Path:
    """``--model``: "tiny" (written into ``scratch``), a path, or None for the bundled one."""
    if name == "tiny":
        return tiny_bundle(scratch)
    if name:
        return Path(name)
    from imageclf.prediction.predictor import default_model_path

    return default_model_path()


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def raw_request(body: bytes, ctype: str, keepalive: bool) -> bytes:
    head = (
        "POST /api/v1/predict HTTP/1.1\r\n"
        f"Host: {HOST}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keepalive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def health_request(keepalive: bool) -> bytes:
    connection = "keep-alive" if keepalive else "close"
    return f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: {connection}\r\n\r\n".encode()


def upload_requests(filename: str, image: bytes, keepalive: bool, n: int = 256) -> list[bytes]:
    """Requests that differ only in their multipart boundary, which browsers, curl and
    requests draw at random for every upload: one boundary repeated would let a parser
    that compiles it into a regex hit Python's regex cache, as no real client allows."""
    return [raw_request(*multipart(filename, image), keepalive) for _ in range(n)]
