"""Run requests in a fresh process and report each one's memory: how far it raised the
process's peak resident memory, and how much it still holds afterwards.

``python memory_probe.py BUNDLE CASE...`` prints one JSON line per case. The peak is
reset before each request (``/proc/self/clear_refs``), so earlier work in the process
never hides a request's own peak. Used by test_web_hostile_budgets.py; a real worker is
measured the same way in test_web_server.py.
"""

from __future__ import annotations

import io
import json
import sys
import time

from crafted import animated_webp, bilevel_png, encode
from PIL import Image

MB = 1024 * 1024


def status_kb(pid: int | str = "self") -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in status
            if line.startswith(("VmRSS:", "VmHWM:"))
        }


def reset_peak(pid: int | str = "self") -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current resident size


def _big(mode: str, color) -> bytes:
    return encode(Image.new(mode, (5000, 5000), color), "PNG", compress_level=1)


# Each case: the files of one request (built before measuring) and nothing else.
CASES = {
    "bomb-20000": lambda: [bilevel_png(20000, 20000)],
    "1bit-5000-x4": lambda: [bilevel_png(5000, 5000)] * 4,
    "1bit-5000-x64": lambda: [bilevel_png(5000, 5000)] * 64,
    "webp-canvas-5000-x4": lambda: [animated_webp(5000, 5000)] * 4,
    "webp-canvas-5000-x40": lambda: [animated_webp(5000, 5000)] * 40,
    "rgba-5000-x2": lambda: [_big("RGBA", (10, 200, 30, 128))] * 2,
    "gray16-5000-x2": lambda: [_big("I;16", 40000)] * 2,
}


def main(bundle: str, names: list[str]) -> None:
    from imageclf.web import create_app

    # Memory is measured here, not time: a busy machine must not turn a slow decode into
    # a budget refusal (the time budget has its own test, on a counted clock).
    # Nor may the per-client share of decoding time (every case here is one client).
    app = create_app(
        bundle,
        TESTING=True,
        IMAGECLF_MODEL_LOADING="eager",
        IMAGECLF_DECODE_SECONDS=120,
        IMAGECLF_CLIENT_DECODE_SECONDS=1e9,
    )
    client = app.test_client()
    warm = encode(Image.new("RGB", (64, 64), "red"))
    for _ in range(3):  # first-request costs (lazy imports, allocator pools) out of the way
        client.post("/api/v1/predict", data={"file": (io.BytesIO(warm), "w.png")})
    for name in names:
        files = CASES[name]()
        body = {"files": [(io.BytesIO(data), f"{i}.img") for i, data in enumerate(files)]}
        reset_peak()
        before = status_kb()
        started = time.perf_counter()
        response = client.post("/api/v1/predict", data=body)
        elapsed = time.perf_counter() - started
        del body, files
        after = status_kb()
        print(
            json.dumps(
                {
                    "case": name,
                    "status": response.status_code,
                    "message": (response.get_json().get("error") or {}).get("message"),
                    "seconds": round(elapsed, 3),
                    "peak_mb": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
                    "held_mb": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
