"""``prediction.side_by_side``: work on a native thread with its own share of torch's
threads, its result or error handed back, really parallel even under gevent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from imageclf.prediction import side_by_side


def test_threads_are_shared_between_the_caller_and_the_other():
    assert side_by_side.shares(1) is None
    assert side_by_side.shares(2) == (1, 1)
    assert side_by_side.shares(5) == (3, 2)


def test_work_runs_on_another_thread_with_its_own_torch_threads():
    before = torch.get_num_threads()

    def work():
        return threading.get_native_id(), torch.get_num_threads()

    native_id, threads = side_by_side.start(work, 1)()
    assert native_id != threading.get_native_id() and threads == 1
    assert torch.get_num_threads() == before  # the caller's count is its own
    with side_by_side.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_an_error_in_the_work_is_raised_by_the_wait():
    def work():
        raise ValueError("broken gate")

    wait = side_by_side.start(work, 1)
    with pytest.raises(ValueError, match="broken gate"):
        wait()


def test_under_gevent_the_work_really_runs_beside_the_caller():
    """Were the thread a greenlet, it would wait for the caller, which waits for it."""
    pytest.importorskip("gevent")
    code = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import _thread, time
        from imageclf.prediction import side_by_side
        started = monkey.get_original("_thread", "allocate_lock")()
        started.acquire()
        wait = side_by_side.start(lambda: started.release() or "beside", 1)
        assert started.acquire(timeout=20), "the work never started while the caller waited"
        print(wait())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "beside"
