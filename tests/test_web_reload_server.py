"""Hot reload on a real server: ``imageclf serve`` (gunicorn, 2 workers) under load while
its model file is replaced ten times, then broken.

What must hold: no request fails; every answer names exactly one version (the header
and the body agree, and it is one of the two files'); every worker serves each new
version within a stated bound (each worker logs the switch with its pid); a broken
file leaves the last good version answering, refused once, with a metric.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_bundle
from PIL import Image
from realserver import serving

WORKERS = 2
RELOADS = 10
CLIENTS = 3
# Each worker looks at the file every second (serve's default --reload-poll-s) and loads
# the tiny model in well under a second: at most 1.15 s measured here (2 shared cores;
# benchmarks/serve_reload.py). The assertion is generous so a busy CI machine passes.
SWITCH_BOUND_S = 15.0


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), (20, 120, 220), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "imageclf-reload-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Load:
    """Clients posting pictures until stopped; every answer kept as (status, versions)."""

    def __init__(self, server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.answers: list[tuple[int, str, str]] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def client(self) -> None:
        body, headers = multipart(png())
        while not self.stop.is_set():
            try:
                status, head, text = self.server.request("POST", "/api/v1/predict", body, headers)
            except OSError as exc:
                self.failures.append(f"connection: {exc}")
                continue
            if status != 200:
                self.failures.append(f"{status}: {text[:200]!r}")
                continue
            answer = json.loads(text)
            self.answers.append(
                (status, head.get("X-Model-Version", ""), answer["model"]["version"])
            )

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def replace(path: Path, data: bytes) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    staged.replace(path)  # atomic: a worker never reads half a file


def wait_for_log(server, start: int, pattern: str, count: int, bound: float) -> float:
    """Seconds until ``count`` distinct pids logged ``pattern`` after offset ``start``."""
    began = time.monotonic()
    while True:
        text = server.text()[start:]
        pids = set(re.findall(pattern, text))
        if len(pids) >= count:
            return time.monotonic() - began
        assert time.monotonic() - began < bound, f"not within {bound}s:\n{server.text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_ten_reloads_under_load_lose_no_request(tmp_path):
    live = tmp_path / "live.safetensors"
    versions = [
        make_tiny_bundle(tmp_path / f"v{seed}.safetensors", seed=seed).read_bytes()
        for seed in (0, 1)
    ]
    names = [version_of(data) for data in versions]
    live.write_bytes(versions[0])
    env = {"IMAGECLF_MAX_REQUESTS": "0"}  # no recycling: the same two workers throughout
    with serving(f"live={live}", tmp_path / "srv", workers=WORKERS, env=env) as server:
        # Every worker has its model (a late one would load the published version at once).
        wait_for_log(server, 0, r"version \w+ in process (\d+):", WORKERS, SWITCH_BOUND_S)
        with Load(server) as load:
            times = []
            for i in range(1, RELOADS + 1):
                start = len(server.text())
                replace(live, versions[i % 2])
                pattern = rf"now serving version {names[i % 2]} \(was \w+\) in process (\d+)"
                times.append(wait_for_log(server, start, pattern, WORKERS, SWITCH_BOUND_S))
            start = len(server.text())
            replace(live, b"\0" * 1000)  # broken: the last good version must keep answering
            wait_for_log(server, start, r"(failed), still serving", 1, SWITCH_BOUND_S)
            time.sleep(1.5)  # both workers have looked at the broken file meanwhile
            after_broken = len(load.answers)
            time.sleep(1.0)
        print(f"all {WORKERS} workers switched within: max {max(times):.2f} s, "
              f"median {sorted(times)[len(times) // 2]:.2f} s over {RELOADS} reloads; "
              f"{len(load.answers)} answers")  # fmt: skip

        assert not load.failures, load.failures[:5]
        assert len(load.answers) > 100
        for _, header, body in load.answers:
            assert header == body and header in names  # exactly one version, named twice
        last_good = names[RELOADS % 2]
        assert {h for _, h, _ in load.answers[after_broken:]} == {last_good}
        assert max(times) < SWITCH_BOUND_S
        metrics = server.request("GET", "/metrics")[2].decode()
        assert (
            f'imageclf_model_reload_total{{model="live",outcome="switched"}} {RELOADS}.0' in metrics
        )
        assert 'imageclf_model_reload_total{model="live",outcome="failed"} 1.0' in metrics
        assert server.text().count("failed, still serving") == 1  # decided once, not per worker
