"""The real thing: ``imageclf serve`` (gunicorn, two gevent workers) over real sockets.

Besides predictions, pages and body limits, this is where issue 12's server-side
classes are proved: decode bombs answered with a 4xx well before gunicorn would kill a
worker, a worker's memory bounded per request and returned, slow clients unable to
block ``/healthz``, and two instances that do not share a control socket. Worker memory
is read from /proc (the peak reset before each request), times are measured and kept far
from the limits they guard.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from crafted import animated_webp, bilevel_png, encode, noise, progressive_jpeg, rle4_bmp
from helpers import make_tiny_bundle, png_bytes
from realserver import RunningServer, serving

from imageclf.web.server import HEADER_TIMEOUT_S, TIMEOUT_S

BODY_TIMEOUT_S = 4  # the module's server gets a short body deadline to test it quickly
PEAK_LIMIT_MB = 500  # issue 12: what one request may add to a worker's peak
HELD_LIMIT_MB = 50  # ...and what the worker may still hold afterwards


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None):
    """(body, content type) for form fields and (field, filename, bytes) files."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for field, filename, data in files:
        out.write(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def proc_status_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in status
            if line.startswith(("VmRSS:", "VmHWM:"))
        }


class Server(RunningServer):
    """The real server with this module's multipart uploads and /proc memory readings."""

    def predict(self, files: list[tuple[str, bytes]], field: str = "files"):
        body, content_type = multipart([(field, name, data) for name, data in files])
        return self.request("POST", "/api/v1/predict", body, {"Content-Type": content_type})

    def reset_peaks(self) -> dict[int, dict[str, int]]:
        """Reset every worker's peak resident size; returns their status right after."""
        before = {}
        for pid in self.worker_pids():
            with open(f"/proc/{pid}/clear_refs", "w") as handle:
                handle.write("5")
            before[pid] = proc_status_kb(pid)
        return before


@contextlib.contextmanager
def running_server(
    folder: Path, env: dict[str, str] | None = None, workers: int = 2, threads: int | None = None
) -> Iterator[Server]:
    """The tiny model served from ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    bundle = make_tiny_bundle(folder / "tiny.safetensors")
    with serving(
        bundle, folder, workers=workers, threads=threads, env=env, server_class=Server
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {
        "IMAGECLF_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "IMAGECLF_MAX_REQUESTS": "0",  # no recycling: memory is measured on the same workers
        # Memory is measured with requests that decode for a few seconds: a shared, busy
        # machine must not turn them into budget refusals. The default (5 s) is proved
        # with a counted clock in test_web_hostile_budgets.py.
        "IMAGECLF_DECODE_SECONDS": "10",
        # Every request here comes from 127.0.0.1, and several decode for seconds on
        # purpose: the per-client share is tested in test_web_decode_share.py.
        "IMAGECLF_CLIENT_DECODE_SECONDS": "100000",
    }
    with running_server(tmp_path_factory.mktemp("serve"), env) as running:
        yield running


# ---------------------------------------------------------------- the basics
def test_server_classifies_real_images(server):
    body, content_type = multipart(
        [
            ("files", "red.png", png_bytes()),
            ("files", "blue.jpg", png_bytes((0, 0, 255), fmt="JPEG")),
        ],
        {"top_k": "3"},
    )
    status, headers, data = server.request(
        "POST", "/api/v1/predict", body, {"Content-Type": content_type}
    )
    assert status == 200, data
    result = json.loads(data)
    assert [p["filename"] for p in result["predictions"]] == ["red.png", "blue.jpg"]
    assert all(len(p["top"]) == 3 for p in result["predictions"])
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert len(headers["X-Request-ID"]) >= 16


def test_server_pages_and_probes(server):
    status, headers, html = server.request("GET", "/")
    assert status == 200 and b'id="upload-form"' in html
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    body, content_type = multipart([("file", "x.png", png_bytes())])
    status, _, html = server.request("POST", "/predict", body, {"Content-Type": content_type})
    assert status == 200 and b'id="label"' in html
    assert server.request("GET", "/healthz")[0] == 200
    status, _, text = server.request("GET", "/metrics")
    assert status == 200 and b"imageclf_http_requests_total" in text


def test_server_redirects_stay_on_this_site(server):
    status, headers, _ = server.request("GET", "/static//app.js", headers={"Host": "evil.example"})
    assert status == 308 and headers["Location"] == "/static/app.js"


# ---------------------------------------------------------------- HOSTILE_INPUTS 9, 10, 11
def test_server_refuses_body_over_limit_with_413(server):
    body, content_type = multipart([("file", "big.png", b"\0" * (6 * 1024 * 1024))])
    status, _, data = server.request(
        "POST", "/api/v1/predict", body, {"Content-Type": content_type}
    )
    assert status == 413
    assert "too large" in json.loads(data)["error"]["message"]


def test_server_refuses_chunked_body_over_limit_with_413(server):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(7 * 16):
            yield b"\0" * (64 * 1024)

    status, _, data = server.request(
        "POST",
        "/api/v1/predict",
        chunks(),
        {"Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"},
        chunked=True,
    )
    assert status == 413
    assert json.loads(data)["error"]["status"] == 413


def test_server_too_many_parts_or_a_huge_field_is_413(server):
    many, content_type = multipart(
        [("file", "a.png", png_bytes())], {f"field{i}": "x" for i in range(500)}
    )
    status, _, data = server.request(
        "POST", "/api/v1/predict", many, {"Content-Type": content_type}
    )
    assert status == 413 and json.loads(data)["error"]["status"] == 413
    huge, content_type = multipart([("file", "a.png", png_bytes())], {"top_k": "1" * 1024 * 1024})
    status, _, data = server.request(
        "POST", "/api/v1/predict", huge, {"Content-Type": content_type}
    )
    assert status == 413 and json.loads(data)["error"]["status"] == 413
    assert server.request("GET", "/healthz")[0] == 200  # and the worker carries on


# ---------------------------------------------------------------- HOSTILE_INPUTS 28
def _load(server: Server, count: int, concurrency: int) -> list[int]:
    images = [encode(noise(64, 64, seed=i)) for i in range(16)]

    def one(i: int) -> int:
        return server.predict([(f"{i}.png", images[i % len(images)])], field="file")[0]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(count)))


def _forward_pictures(server: Server) -> float:
    """Pictures the workers' models have run so far (summed over workers by /metrics)."""
    text = server.request("GET", "/metrics")[2].decode()
    (line,) = [x for x in text.splitlines() if x.startswith("imageclf_forward_pass_images_sum")]
    return float(line.split()[1])


def test_concurrent_requests_each_get_their_own_answer(server):
    """Concurrent requests may share a forward pass in a worker (web/forward.py): each
    must still get the answer for its own picture, as the in-process Predictor gives it,
    and every picture goes through the model exactly once."""
    from imageclf import Predictor

    images = [encode(noise(40 + i, 40, seed=100 + i)) for i in range(24)]
    predictor = Predictor.load(server.home.parent / "tiny.safetensors")
    expected = [predictor.predict(image, top_k=3)[0] for image in images]
    before = _forward_pictures(server)

    def one(i: int) -> list:
        files = [("files", f"{i}-{k}.png", images[k]) for k in range(i, i + 1 + i % 3)]
        body, content_type = multipart(files, {"top_k": "3"})
        status, _, data = server.request(
            "POST", "/api/v1/predict", body, {"Content-Type": content_type}
        )
        assert status == 200, data
        return json.loads(data)["predictions"]

    requests = [i for i in range(24) if i + 1 + i % 3 <= 24]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, requests * 3))
    sent = 0
    for i, predictions in zip(requests * 3, answers, strict=True):
        for k, prediction in enumerate(predictions, start=i):
            assert prediction["filename"] == f"{i}-{k}.png"
            got = [(p["label"], p["probability"]) for p in prediction["top"]]
            assert [label for label, _ in got] == [label for label, _ in expected[k]]
            np.testing.assert_allclose([p for _, p in got], [p for _, p in expected[k]], atol=1e-4)
            sent += 1
    assert _forward_pictures(server) - before == sent


def test_one_worker_with_every_thread_serves_concurrent_requests(tmp_path):
    """``serve --workers 1 --threads 2``: one worker process whose forward passes run on
    two torch threads; concurrent requests are all answered, every picture once."""
    with running_server(tmp_path, workers=1, threads=2) as single:
        assert len(single.worker_pids()) == 1
        statuses = _load(single, 64, 8)
        assert statuses == [200] * 64
        assert _forward_pictures(single) == 64
        assert single.stop() == 0
    text = single.log.read_text()
    assert "with 1 worker(s) x 2 thread(s)" in text
    assert "Traceback" not in text


def test_server_bounded_load_concurrency_32_no_errors(server):
    statuses = _load(server, 320, 32)
    assert statuses == [200] * 320


@pytest.mark.slow
def test_server_soak_keeps_worker_memory_flat(server):
    """HOSTILE_INPUTS 28: 10k requests; the workers' resident memory stays flat."""
    _load(server, 500, 8)  # warm up allocators and caches
    before = {pid: proc_status_kb(pid)["VmRSS"] for pid in server.worker_pids()}
    statuses = _load(server, 10_000, 8)
    assert statuses.count(200) == len(statuses)
    after = {pid: proc_status_kb(pid)["VmRSS"] for pid in server.worker_pids()}
    assert after.keys() == before.keys()  # the same workers: none died or was recycled
    growth_mb = {pid: (after[pid] - before[pid]) / 1024 for pid in before}
    assert max(growth_mb.values()) < 25, growth_mb


# ---------------------------------------------------------------- issue 12.1: decode bombs
def test_server_answers_decode_bombs_with_4xx_long_before_a_worker_is_killed(server):
    """Before: a 0.2 MB progressive JPEG kept a worker busy until gunicorn killed it at
    30 s (and answered gunicorn's HTML 500); two took the service down. Now every bomb
    gets its 4xx JSON well within half the worker timeout, and no worker dies."""
    workers = server.worker_pids()
    scans = progressive_jpeg(4992, 4992, 3000)
    rle = rle4_bmp(4000, 4000)
    one_bit = bilevel_png(5000, 5000)
    attacks = [
        ("scans", [("a.jpg", scans)], 422),
        ("scans", [("b.jpg", scans)], 422),
        ("rle", [(f"{i}.bmp", rle) for i in range(8)], 413),  # the decode deadline
        ("pixels", [(f"{i}.png", one_bit) for i in range(64)], 413),  # the pixel budget
    ]

    def attack(item):
        _, files, _ = item
        started = time.monotonic()
        status, headers, data = server.predict(files)
        return status, headers, data, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(attacks)) as pool:
        answers = list(pool.map(attack, attacks))
    for (kind, _, expected), (status, headers, data, seconds) in zip(attacks, answers, strict=True):
        assert status == expected, (kind, data[:300])
        assert headers["Content-Type"] == "application/json"
        assert json.loads(data)["error"]["status"] == expected
        assert seconds < TIMEOUT_S / 2, (kind, seconds)
    assert server.worker_pids() == workers  # nobody was killed or restarted
    assert "WORKER TIMEOUT" not in server.log.read_text()
    assert server.request("GET", "/healthz")[0] == 200


# ---------------------------------------------------------------- issue 12.2: worker memory
@pytest.mark.parametrize(
    ("case", "build", "expected"),
    [
        ("2 WebPs with a 5000x5000 canvas", lambda: [animated_webp(5000, 5000)] * 2, 200),
        ("40 WebPs with a 5000x5000 canvas", lambda: [animated_webp(5000, 5000)] * 40, 413),
        ("64 one-bit 5000x5000 PNGs", lambda: [bilevel_png(5000, 5000)] * 64, 413),
        ("4 one-bit 5000x5000 PNGs", lambda: [bilevel_png(5000, 5000)] * 4, 200),
    ],
)
def test_server_request_memory_is_bounded_and_returned(server, case, build, expected):
    """Before: 64 one-bit PNGs took a worker to a 6.4 GB peak and 4.2 GB held; 40 tiny
    WebPs to 4.3 GB. Now any request raises the peak of the worker that served it by at
    most ~500 MB, and the worker returns to within ~50 MB of where it was."""
    files = [(f"{i}.img", data) for i, data in enumerate(build())]
    before = server.reset_peaks()
    status, _, data = server.predict(files)
    assert status == expected, data[:300]
    for pid, start in before.items():
        now = proc_status_kb(pid)
        peak_mb = (now["VmHWM"] - start["VmRSS"]) / 1024
        held_mb = (now["VmRSS"] - start["VmRSS"]) / 1024
        assert peak_mb < PEAK_LIMIT_MB, (case, pid, peak_mb)
        assert held_mb < HELD_LIMIT_MB, (case, pid, held_mb)


# ---------------------------------------------------------------- issue 12.3: slow clients
class SlowClients:
    """Connections that send a request a byte per ``interval`` seconds: ``head`` ones are
    still in the request line, ``body`` ones have sent their headers and drip the body."""

    def __init__(self, port: int, heads: int, bodies: int, interval: float = 0.5) -> None:
        self.sockets: list[tuple[str, socket.socket]] = []
        for kind, count in (("head", heads), ("body", bodies)):
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if kind == "head":
                    sock.sendall(b"GET /hea")
                else:
                    sock.sendall(
                        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                        b"multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b"
                    )
                self.sockets.append((kind, sock))
        self.answers: dict[int, bytes] = {}
        self.closed_after: dict[int, float] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, args=(interval,), daemon=True)
        self._thread.start()

    def _drip(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for index, (_, sock) in enumerate(self.sockets):
                if index in self.closed_after:
                    continue
                try:  # read first: an answer (or the close) must not be lost to a reset
                    sock.setblocking(False)
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        sock.setblocking(True)
                        sock.send(b"x")  # nothing from the server yet: one more byte
                        continue
                except OSError:
                    data = b""
                if data:
                    self.answers[index] = self.answers.get(index, b"") + data
                    continue
                self.closed_after[index] = time.monotonic() - self.started

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.sockets if k == kind)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for _, sock in self.sockets:
            sock.close()


def test_server_slow_clients_cannot_block_healthz(server):
    """Before: two clients sending a byte at a time blocked every request until the
    worker timeout. Now 100 of them (50 in the headers, 50 in the body) leave /healthz
    answered within 1 s, and the read deadlines close them all."""
    slow = SlowClients(server.port, heads=50, bodies=50)
    try:
        time.sleep(1.0)  # all of them connected and trickling
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            status, _, _ = server.request("GET", "/healthz")
            worst = max(worst, time.monotonic() - started)
            assert status == 200
            time.sleep(0.2)
        assert worst < 1.0, worst
        assert len(slow.closed_after) < len(slow.sockets)  # still connected meanwhile
        # The deadlines: headers within HEADER_TIMEOUT_S, bodies within BODY_TIMEOUT_S.
        limit = max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 10
        deadline = time.monotonic() + limit
        while len(slow.closed_after) < len(slow.sockets) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        slow.close()
    heads = [i for i, (k, _) in enumerate(slow.sockets) if k == "head"]
    bodies = [i for i, (k, _) in enumerate(slow.sockets) if k == "body"]
    assert all(i in slow.closed_after for i in heads + bodies), "a slow client was never cut off"
    assert max(slow.closed_after[i] for i in heads) < HEADER_TIMEOUT_S + 5
    for i in bodies:  # each body got a proper 408 before its connection closed
        assert slow.answers.get(i, b"").startswith(b"HTTP/1.1 408"), slow.answers.get(i)
        assert slow.closed_after[i] < BODY_TIMEOUT_S + 5
    assert server.request("GET", "/healthz")[0] == 200


# ---------------------------------------------------------------- stopping, two instances
def test_two_servers_run_side_by_side_and_stop_cleanly(tmp_path):
    """Each test here has its own servers (the module's shared one keeps running). Two
    instances for the same user share no control socket: stopping one leaves the other
    serving, and neither leaves a socket file in the home folder."""
    with (
        running_server(tmp_path / "a") as first,
        running_server(tmp_path / "b", {"HOME": str(tmp_path / "a" / "home")}) as second,
    ):
        assert first.request("GET", "/readyz")[0] == 200
        assert second.request("GET", "/readyz")[0] == 200
        assert first.stop() == 0
        assert second.request("GET", "/healthz")[0] == 200
        assert not list(first.home.rglob("*.ctl")) and not list(second.home.rglob("*.ctl"))
        assert second.stop() == 0
    for log in (first.log, second.log):
        text = log.read_text()
        assert text.count("Booting worker") >= 2
        assert "Traceback" not in text and "WORKER TIMEOUT" not in text
