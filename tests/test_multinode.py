"""Two "machines" on localhost: two torchrun launchers joined by a c10d rendezvous.

Each node is its own ``torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d``
process with its own run folder and its own cache ($IMAGECLF_HOME), as separate
machines without a shared disk would be; gloo on CPU carries the gradients.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_noise_folder
from PIL import Image
from safetensors.torch import load_file

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# As tests/test_distributed.py: seed-a (no BatchNorm, no dropout), fp32, one thread, so a
# synchronised pair of ranks matches to summation order and a lone one would not.
TINY = ["--recipe", "seed-a", "--batch-size", "16", "--threads", "1", "--precision", "fp32"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp: Path, name: str, **extra: str) -> dict:
    # One thread each: the two nodes share this machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "IMAGECLF_HOME": str(tmp / f"home-{name}"),
            **extra}  # fmt: skip


class Node:
    """One machine: a torchrun launcher (and its worker) writing to its own log."""

    def __init__(self, tmp: Path, name: str, rank: int, port: int, argv: list[str], **env: str):
        self.log = tmp / f"node-{name}.log"
        command = [
            TORCHRUN, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test",
            # c10d ignores --node-rank and numbers nodes by address (as text), then pid:
            # "127.0.0.1" < "localhost" makes the first node rank 0 (pids wrap around).
            f"--local-addr={'127.0.0.1' if rank == 0 else 'localhost'}",
            "-m", "imageclf", "-q", "train", *argv,
        ]  # fmt: skip
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                command, env=_env(tmp, name, **env), stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> list[int]:
        """The launcher and everything under it (workers run in sessions of their own)."""
        tree = [self.proc.pid]
        for pid in tree:
            tree += _children(pid)
        return tree

    def signal(self, sig: int) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _start_pair(tmp: Path, argvs: list[list[str]], **env: str) -> list[Node]:
    """Two nodes; the first (rank 0) hosts the rendezvous store: started alone first."""
    port = _free_port()
    first = Node(tmp, "n0", 0, port, argvs[0], **env)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if first.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the first node never listened:\n" + first.output())
            time.sleep(0.1)
    return [first, Node(tmp, "n1", 1, port, argvs[1], **env)]


def _own_folders(argv: list[str], outs: list[Path], data: list[Path]) -> list[list[str]]:
    """Each node its own --out and its own --data (separate disks)."""
    return [[*argv, "--data", str(d), "--out", str(o)] for o, d in zip(outs, data, strict=True)]


def _stop(nodes: list[Node]) -> None:
    for node in nodes:
        node.signal(signal.SIGKILL)  # SIGKILL also ends a stopped process
        node.proc.wait(timeout=60)


def _wait_for_first_epoch(nodes: list[Node], outs: list[Path]) -> int:
    """The index of the node whose run folder (rank 0's) holds a finished epoch."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for i, out in enumerate(outs):
            history = out / "history.json"
            if history.is_file() and json.loads(history.read_text()):
                return i
        if any(node.proc.poll() is not None for node in nodes):
            pytest.fail("a node ended before the first epoch:\n" + nodes[0].output())
        time.sleep(0.02)
    pytest.fail("no epoch finished within 240 s")


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("imageclf: error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in "".join(
        line for line in output.splitlines() if line.startswith("[rank")
    ), output  # the worker printed no traceback of its own (torchrun's summary is its own)
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny data, and the one-node two-process run to compare with."""
    root = tmp_path_factory.mktemp("small")
    data = write_noise_folder(root / "ds", per_class=32)
    subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "imageclf", "-q", "train",
         *TINY, "--data", str(data), "--epochs", "2", "--out", str(root / "one-node")],
        check=True, env=_env(root, "one-node"), timeout=300,
    )  # fmt: skip
    return data, root / "one-node"


@pytest.mark.slow
def test_two_nodes_train_as_one_node_two_processes_and_only_rank0_writes(small, tmp_path):
    data, one_node = small
    outs = [tmp_path / "out-a", tmp_path / "out-b"]  # each node its own --out
    copy = shutil.copytree(data, tmp_path / "copy")  # and its own copy of the data
    nodes = _start_pair(tmp_path, _own_folders([*TINY, "--epochs", "2"], outs, [data, copy]))
    try:
        codes = [node.wait() for node in nodes]
    finally:
        _stop(nodes)
    assert codes == [0, 0], "\n".join(node.output() for node in nodes)
    written = [out for out in outs if out.exists()]
    assert len(written) == 1, "only rank 0 writes; the other node's --out stays unmade"
    run = written[0]
    # The same files as the one-node run, nothing more.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one_node.iterdir())
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    expected = json.loads((one_node / "history.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(expected, history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    weights, other = load_file(one_node / "model.safetensors"), load_file(run / "model.safetensors")
    assert weights.keys() == other.keys()
    for key, w in weights.items():
        assert ((w - other[key]).norm() / w.norm()).item() < 1e-5, key


@pytest.fixture(scope="module")
def longer(tmp_path_factory) -> Path:
    """Enough images that an epoch lasts about a second: time to stop a node mid-run."""
    return write_noise_folder(tmp_path_factory.mktemp("longer") / "ds", per_class=200)


@pytest.mark.slow
def test_killed_node_stops_the_other_and_two_nodes_resume(longer, tmp_path):
    outs = [tmp_path / "out-a", tmp_path / "out-b"]
    nodes = _start_pair(tmp_path, _own_folders([*TINY, "--epochs", "4"], outs, [longer, longer]))
    try:
        writer = _wait_for_first_epoch(nodes, outs)
        assert writer == 0, "--local-addr makes the first node rank 0"
        survivor, victim = nodes[writer], nodes[1 - writer]
        victim.signal(signal.SIGKILL)  # the machine is gone: launcher and worker at once
        code = survivor.wait(timeout=120)  # not a hang: gloo sees the connection reset
    finally:
        _stop(nodes)
    assert code != 0
    line = _one_error_line(survivor.output())
    assert "lost contact with the other training processes" in line
    assert f"--resume {outs[writer]}" in line
    run = outs[writer]
    before = json.loads((run / "history.json").read_text())
    assert 1 <= len(before) < 4, "killed mid-run"
    assert not outs[1 - writer].exists()

    # Resume on two nodes: rank 0's node from its run folder; the other node's folder
    # does not exist (no shared disk): rank 0 sends it the checkpoint.
    other = outs[1 - writer]
    again = _start_pair(tmp_path, [["--resume", str(run)], ["--resume", str(other)]])
    try:
        codes = [node.wait() for node in again]
    finally:
        _stop(again)
    assert codes == [0, 0], "\n".join(node.output() for node in again)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # continued, no epoch twice
    assert history[: len(before)] == before
    assert (run / "model.safetensors").is_file()
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 4
    assert not outs[1 - writer].exists()


@pytest.mark.slow
def test_silent_node_stops_the_other_after_the_timeout(longer, tmp_path):
    """A machine that vanishes without closing its connections (SIGSTOP: no reset is
    sent) is noticed only by the process-group timeout; torch's default is 30 min."""
    outs = [tmp_path / "out-a", tmp_path / "out-b"]
    argvs = _own_folders([*TINY, "--epochs", "4"], outs, [longer, longer])
    nodes = _start_pair(tmp_path, argvs, IMAGECLF_DIST_TIMEOUT="20")
    try:
        writer = _wait_for_first_epoch(nodes, outs)
        assert writer == 0, "--local-addr makes the first node rank 0"
        survivor, victim = nodes[writer], nodes[1 - writer]
        victim.signal(signal.SIGSTOP)
        code = survivor.wait(timeout=240)
    finally:
        _stop(nodes)
    assert code != 0
    line = _one_error_line(survivor.output())
    assert "did not answer within 20 s (IMAGECLF_DIST_TIMEOUT)" in line
    assert "Timed out" in line


@pytest.mark.slow
def test_nodes_with_different_data_refuse_to_train(small, tmp_path):
    data, _ = small
    copy = shutil.copytree(data, tmp_path / "copy")
    image = next((copy / "c1").iterdir())
    Image.new("RGB", (32, 32), "red").save(image)  # one picture differs on the second node
    outs = [tmp_path / "out-a", tmp_path / "out-b"]
    nodes = _start_pair(tmp_path, _own_folders([*TINY, "--epochs", "2"], outs, [data, copy]))
    try:
        codes = [node.wait() for node in nodes]
    finally:
        _stop(nodes)
    assert codes[0] != 0 and codes[1] != 0
    for node in nodes:
        line = _one_error_line(node.output())
        assert "the data differs between the nodes" in line
    assert not any((out / "last.pt").exists() for out in outs)


@pytest.mark.slow
def test_resume_without_a_checkpoint_stops_both_nodes(tmp_path):
    """Rank 0 tells the other node that there is nothing to send, instead of leaving it
    waiting for the checkpoint until the timeout."""
    missing = tmp_path / "nowhere"
    nodes = _start_pair(tmp_path, [["--resume", str(missing)], ["--resume", str(missing)]])
    try:
        codes = [node.wait() for node in nodes]
    finally:
        _stop(nodes)
    assert codes[0] != 0 and codes[1] != 0
    assert "nothing to resume" in _one_error_line(nodes[0].output())
    assert "rank 0 could not read the run" in _one_error_line(nodes[1].output())
    assert not missing.exists()


def test_bad_timeout_is_one_clear_error(monkeypatch):
    from imageclf.device import dist_timeout
    from imageclf.errors import UserInputError

    monkeypatch.setenv("IMAGECLF_DIST_TIMEOUT", "soon")
    with pytest.raises(UserInputError, match="IMAGECLF_DIST_TIMEOUT takes seconds"):
        dist_timeout()
    monkeypatch.setenv("IMAGECLF_DIST_TIMEOUT", "90")
    assert dist_timeout().total_seconds() == 90
