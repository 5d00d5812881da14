"""The container image (Containerfile) run for real with podman, on 127.0.0.1 ports.

Build it first (CI does, in .ci/run): ``source ../shared/container/setup-podman.sh`` and
``make image BASE=$IMAGECLF_BASE_IMAGE``. Without podman or the image these tests skip;
under CI=true that skip is a failure. $IMAGECLF_IMAGE names another image.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import png_bytes
from realserver import free_port

IMAGE = os.environ.get("IMAGECLF_IMAGE", "localhost/imageclf:latest")
# setup-podman.sh's runtime settings (runc, cgroupfs): used when the caller did not source it.
SANDBOX_CONF = Path("/etc/containers/imageclf-sandbox.conf")
STARTUP_S = 180
# Longer than gunicorn's graceful timeout (10 s), as orchestrators' defaults are (30 s).
STOP_S = 30
SMALL = {"IMAGECLF_WORKERS": "1", "IMAGECLF_THREADS": "1"}


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and SANDBOX_CONF.exists():
        env["CONTAINERS_CONF"] = str(SANDBOX_CONF)
    # No systemd here to time health checks; `podman healthcheck run` runs them on demand.
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("needs podman (source ../shared/container/setup-podman.sh)")
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.skip(f"image {IMAGE} not built (make image)")
    return IMAGE


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """One request on a new connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def multipart(data: bytes, name: str = "red.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def wait_ready(name: str, port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if podman("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
            raise AssertionError(f"container {name} exited:\n{logs(name)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, "GET", "/readyz")[0] == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"container {name} not ready after {STARTUP_S}s:\n{logs(name)}")


def logs(name: str) -> str:
    result = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
    return result.stdout + result.stderr


def start(image: str, port: int, env: dict[str, str] | None = None, *extra: str) -> str:
    """A detached container named for this test, publishing 127.0.0.1:port unless in a pod."""
    name = f"imageclf-test-{uuid.uuid4().hex[:8]}"
    options = [f"--env={k}={v}" for k, v in {**SMALL, **(env or {})}.items()]
    publish = [] if any(e.startswith("--pod") for e in extra) else ["-p", f"127.0.0.1:{port}:8000"]
    podman("run", "-d", "--name", name, *publish, *options, *extra, image)
    return name


@pytest.fixture(scope="module")
def served(image):
    """One container serving the bundled model, read-only apart from /tmp."""
    port = free_port()
    name = start(image, port, None, "--read-only", "--tmpfs", "/tmp")
    try:
        wait_ready(name, port)
        yield name, port
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_ready_predicts_and_serves_the_page(served):
    _, port = served
    status, body = request(port, "GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"

    upload, content_type = multipart(png_bytes())
    status, body = request(port, "POST", "/api/v1/predict", upload, {"Content-Type": content_type})
    answer = json.loads(body)
    assert status == 200, answer
    assert answer["model"]["name"] == bundled_model_name()  # the model inside the image
    assert answer["predictions"][0]["filename"] == "red.png"
    assert len(answer["predictions"][0]["top"]) >= 1

    status, body = request(port, "GET", "/")
    assert status == 200 and b"<form" in body


def bundled_model_name() -> str:
    from imageclf import Predictor

    return Predictor.load().name


def test_processes_do_not_run_as_root(served):
    name, _ = served
    # Every process's real and effective uid, seen from inside (PID 1 is gunicorn's master).
    script = (
        "import glob\n"
        "for f in glob.glob('/proc/[0-9]*/status'):\n"
        "    uid = next(l for l in open(f) if l.startswith('Uid:')).split()[1:3]\n"
        "    print(f.split('/')[2], *uid)\n"
    )
    rows = [line.split() for line in podman("exec", name, "python3", "-c", script).splitlines()]
    assert "1" in [pid for pid, *_ in rows]
    assert len(rows) >= 3  # master, worker, this script
    assert all(real == effective == "10001" for _, real, effective in rows), rows


def test_healthcheck_runs_inside_the_image(served, image):
    name, _ = served
    check = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
    )
    assert "/healthz" in " ".join(check["Test"])
    assert podman("healthcheck", "run", name).strip() in ("", "healthy")


def test_sigterm_lets_the_request_in_flight_finish(image):
    port = free_port()
    name = start(image, port)
    try:
        wait_ready(name, port)
        upload, content_type = multipart(png_bytes())
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            head = (
                f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(upload)}\r\n"
                "Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode())
            # The worker has the request: it asks for the body.
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            stop = threading.Thread(target=podman, args=("stop", "-t", str(STOP_S), name))
            stop.start()
            deadline = time.monotonic() + 60
            while "Handling signal: term" not in logs(name):
                assert time.monotonic() < deadline, logs(name)
                time.sleep(0.2)
            sock.sendall(upload)  # only now, while the server is stopping
            answer = read_response(sock)
        stop.join(timeout=STOP_S + 30)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"predictions"' in answer
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name)
        assert state.split() == ["exited", "0"], logs(name)  # not killed after the grace
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def read_response(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def worker_boots(name: str) -> int:
    return logs(name).count("Booting worker")


def access_lines(name: str) -> int:
    return logs(name).count('"GET /readyz HTTP/1.1" 200')


@pytest.mark.slow
def test_two_servers_on_one_port_answer_while_one_restarts(image):
    """A pod publishes one port; both containers bind it with SO_REUSEPORT and the kernel
    spreads connections between them. tcp_migrate_req hands a stopping server's queued
    connections to the other instead of resetting them. Failed with gunicorn's own
    reuse_port (a socket per worker): connections refused while a worker was recycled."""
    port, pod = free_port(), f"imageclf-pod-{uuid.uuid4().hex[:8]}"
    podman("pod", "create", "--name", pod, "-p", f"127.0.0.1:{port}:8000",
           "--sysctl", "net.ipv4.tcp_migrate_req=1")  # fmt: skip
    # Workers recycled every ~300 requests too: a recycle must not close the port either.
    env = {"IMAGECLF_REUSE_PORT": "1", "IMAGECLF_ACCESS_LOG": "1", "IMAGECLF_MAX_REQUESTS": "300"}
    try:
        first, second = (start(image, port, env, f"--pod={pod}") for _ in range(2))
        for name in (first, second):
            wait_until(lambda n=name: "loaded in" in logs(n), f"{name} loads", name)
        failures, answered = [], [0]
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                try:
                    status, body = request(port, "GET", "/readyz")
                    answered[0] += 1
                    if status != 200:
                        failures.append((status, body[:200]))
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(repr(exc))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            for name in (first, second):  # both answer through the one address
                wait_until(lambda n=name: access_lines(n) > 0, f"{name} answers", name)
            podman("stop", "-t", str(STOP_S), first)
            before = answered[0]
            wait_until(lambda: answered[0] > before + 20, "the other answers alone", second)
            served_before = access_lines(first)
            podman("start", first)
            wait_until(lambda: access_lines(first) > served_before, "restarted answers", first)
            wait_until(lambda: worker_boots(second) >= 2, "a worker recycled", second)
        finally:
            done.set()
            thread.join(timeout=90)
        assert failures == [], failures[:5]
        assert answered[0] > 0
    finally:
        podman("pod", "rm", "-f", "-t", "0", pod, check=False, timeout=180)


def wait_until(condition, what: str, name: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}\n{logs(name)[-3000:]}"
        time.sleep(0.3)
