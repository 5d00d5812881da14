"""Memory of the running container (what deploy/'s resource requests are sized from).

    source ../shared/container/setup-podman.sh && make image BASE=$IMAGECLF_BASE_IMAGE
    python benchmarks/container_memory.py [--image localhost/imageclf:latest] [--requests 200]

For 1 and 2 gunicorn workers: start the image, wait for /readyz, sum every process's
PSS and RSS inside the container (from /proc, PSS counts shared pages once), then send
--requests predictions of a 500x375 JPEG through the API and measure again. Also the
image's size as the engine reports it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

# Runs inside the container: kB of PSS and RSS over every process but itself.
MEASURE = """
import glob, json, os
total = {"pss_kb": 0, "rss_kb": 0, "processes": 0}
for path in glob.glob("/proc/[0-9]*/smaps_rollup"):
    if path.split("/")[2] == str(os.getpid()):
        continue
    for line in open(path):
        key, value = line.split(":", 1)[0], line.split()[1:2]
        if key in ("Pss", "Rss"):
            total[key.lower() + "_kb"] += int(value[0])
    total["processes"] += 1
print(json.dumps(total))
"""


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, method: str, path: str, body=None, headers=None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def jpeg_upload() -> tuple[bytes, str]:
    pixels = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    body = head.encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def measure(image: str, workers: int, requests: int) -> dict:
    port, name = free_port(), f"imageclf-mem-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000",
           f"--env=IMAGECLF_WORKERS={workers}", image)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if call(port, "GET", "/readyz") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready:\n" + podman("logs", name))
            time.sleep(0.5)
        time.sleep(2)  # every worker loads at its own pace; /readyz answered for one
        idle = json.loads(podman("exec", name, "python3", "-c", MEASURE))
        body, content_type = jpeg_upload()
        start = time.perf_counter()
        statuses = [
            call(port, "POST", "/api/v1/predict", body, {"Content-Type": content_type})
            for _ in range(requests)
        ]
        seconds = time.perf_counter() - start
        busy = json.loads(podman("exec", name, "python3", "-c", MEASURE))
        return {
            "workers": workers,
            "requests": requests,
            "ok": statuses.count(200),
            "seconds": round(seconds, 1),
            "idle": idle,
            "after_requests": busy,
        }
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="localhost/imageclf:latest")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/container_memory.json")
    args = parser.parse_args()

    size = int(podman("image", "inspect", "--format", "{{.Size}}", args.image).strip())
    rows = [measure(args.image, workers, args.requests) for workers in (1, 2)]
    print(f"image {args.image}: {size / 1e6:.0f} MB")
    print(
        f"{'workers':>7} {'PSS idle MiB':>12} {'PSS after MiB':>13} {'RSS after MiB':>13} {'ok':>5}"
    )
    for row in rows:
        print(
            f"{row['workers']:>7} {row['idle']['pss_kb'] / 1024:>12.0f} "
            f"{row['after_requests']['pss_kb'] / 1024:>13.0f} "
            f"{row['after_requests']['rss_kb'] / 1024:>13.0f} {row['ok']:>5}"
        )
    result = {
        "machine": describe(),
        "loadavg": loadavg(),
        "image": args.image,
        "image_bytes": size,
        "runs": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
