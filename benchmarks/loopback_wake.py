"""What a loopback round trip costs a client beyond the server's own work, by work length.

The serving benchmark's concurrency-1 goal compares a server's p50, as a client on the
same machine sees it, with an in-process call. Part of the difference is not the
server's at all: the client sleeps in ``recv`` while the server computes, and waking it
costs more the longer it slept (its core idles deeper). This measures that part alone:
a plain socket server that busy-works for W ms (as a forward pass does) and answers 900
bytes, against a client that blocks in ``recv`` and one that spins on a non-blocking
socket (which never sleeps). Nothing but the standard library; nothing leaves the machine.

    python benchmarks/loopback_wake.py            # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import describe, loadavg  # noqa: E402

HOST = "127.0.0.1"
REQUEST, ANSWER = 1200, 900  # bytes: about one API request and one answer


def _server(ports, work_ms: float) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        ports.put(listener.getsockname()[1])
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                got = 0
                while got < REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got += len(chunk)
                until = time.perf_counter() + work_ms / 1000
                while time.perf_counter() < until:  # busy, as a forward pass is
                    pass
                conn.sendall(b"x" * ANSWER)


def round_trips(work_ms: float, spin: bool, n: int) -> float:
    """Median ms a client waits beyond ``work_ms``, blocking or spinning in ``recv``."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_server, args=(ports, work_ms))
    server.start()
    extra = []
    with socket.create_connection((HOST, ports.get())) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(not spin)
        for _ in range(n):
            started = time.perf_counter()
            client.sendall(b"q" * REQUEST)
            got = 0
            while got < ANSWER:
                with contextlib.suppress(BlockingIOError):  # spinning: nothing yet
                    got += len(client.recv(65536))
            extra.append((time.perf_counter() - started) * 1000 - work_ms)
    server.join()
    return statistics.median(extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-ms", default="0.1,1,3,10", help="comma-separated")
    parser.add_argument("--round-trips", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="median over repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "loopback_wake.json")
    args = parser.parse_args(argv)
    load_before = loadavg()
    rows = []
    for work in (float(w) for w in args.work_ms.split(",")):
        row = {"work_ms": work}
        for name, spin in (("blocking_client_ms", False), ("spinning_client_ms", True)):
            runs = [round_trips(work, spin, args.round_trips) for _ in range(args.repeats)]
            row[name] = round(statistics.median(runs), 3)
        rows.append(row)
        print(
            f"work {work:>5} ms: a blocking client waits {row['blocking_client_ms']:.3f} ms "
            f"beyond it, a spinning one {row['spinning_client_ms']:.3f} ms",
            flush=True,
        )
    report = {
        "benchmark": "loopback_wake",
        "machine": describe(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": loadavg(),
        "round_trips": args.round_trips,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
