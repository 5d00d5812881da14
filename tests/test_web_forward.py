"""The model thread of a gevent worker (web/forward.py): waiting predictions are merged
into one pass, each request gets exactly its own rows back, a failure reaches every
request of its pass and no other, and nothing else runs on the model during a pass."""

from __future__ import annotations

import threading
import time

import gevent
import numpy as np
import pytest

from imageclf.web.forward import ForwardRunner, connections, gevent_is_patched


class FakePredictor:
    """calibrated_logits returns each picture's first pixel value, so rows are traceable;
    each pass takes ``delay`` seconds on whatever thread runs it."""

    def __init__(self, delay: float = 0.05, fail_on: int | None = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        self.passes: list[list[int]] = []
        self.threads: set[int] = set()
        self.busy = 0
        self.overlapped = False

    def _enter(self) -> None:
        self.busy += 1
        self.overlapped |= self.busy > 1
        self.threads.add(threading.get_ident())

    def calibrated_logits(self, batch: np.ndarray) -> np.ndarray:
        self._enter()
        try:
            time.sleep(self.delay)
            ids = [int(v) for v in batch[:, 0, 0, 0]]
            self.passes.append(ids)
            if self.fail_on in ids:
                raise RuntimeError("the model failed")
            return np.asarray(ids, dtype=np.float32)[:, None]
        finally:
            self.busy -= 1

    def gradcam(self, batch: np.ndarray) -> str:
        self._enter()
        try:
            time.sleep(self.delay)
            return "explained"
        finally:
            self.busy -= 1


def pictures(*ids: int) -> np.ndarray:
    batch = np.zeros((len(ids), 2, 2, 3), np.uint8)
    batch[:, 0, 0, 0] = ids
    return batch


@pytest.fixture(autouse=True)
def _busy_worker(monkeypatch):
    """Several open connections, as in a loaded worker: passes go to the model thread."""
    monkeypatch.setattr(connections, "open", 8)


def run_all(runner: ForwardRunner, predictor, requests: list[tuple[int, ...]]):
    """Each request in its own greenlet: the first, then (while its pass runs) all the
    others at once; the greenlets, in request order."""
    greenlets = [gevent.spawn(runner.logits, predictor, pictures(*requests[0]))]
    gevent.sleep(0.01)
    greenlets += [gevent.spawn(runner.logits, predictor, pictures(*r)) for r in requests[1:]]
    gevent.joinall(greenlets, timeout=30)
    return greenlets


def test_waiting_requests_share_a_pass_and_get_their_own_rows():
    sizes: list[int] = []
    runner = ForwardRunner(cooperative=True, on_pass=sizes.append)
    predictor = FakePredictor()
    requests = [(1,), (2, 3), (4,), (5,), (6, 7, 8), (9,), (10,), (11,)]
    done = run_all(runner, predictor, requests)
    for request, greenlet in zip(requests, done, strict=True):
        assert greenlet.successful(), greenlet.exception
        assert greenlet.value[:, 0].tolist() == list(request)  # its own rows, in order
    # The first request runs alone; the seven that arrived meanwhile go as one pass.
    assert predictor.passes == [[1], list(range(2, 12))]
    assert sizes == [1, 10]
    assert predictor.threads != {threading.get_ident()}  # off the event loop's thread


def test_a_pass_takes_at_most_max_rows_but_a_big_request_goes_whole():
    runner = ForwardRunner(cooperative=True, max_rows=4)
    predictor = FakePredictor(delay=0.02)
    requests = [(1,), (2, 3), (4, 5), (6,), (7, 8, 9, 10, 11, 12), (13,)]
    done = run_all(runner, predictor, requests)
    assert all(g.successful() for g in done)
    assert predictor.passes == [[1], [2, 3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [13]]


def test_a_failed_pass_fails_its_own_requests_only():
    runner = ForwardRunner(cooperative=True)
    predictor = FakePredictor(fail_on=3)
    first, *failing = run_all(runner, predictor, [(1,), (2,), (3,)])  # passes [1], [2, 3]
    assert first.value[:, 0].tolist() == [1]
    for greenlet in failing:
        assert isinstance(greenlet.exception, RuntimeError)
    # The runner is not stuck: the next request gets its answer.
    later = run_all(runner, predictor, [(4,)])[0]
    assert later.value[:, 0].tolist() == [4]


def test_requests_for_different_models_are_not_merged():
    runner = ForwardRunner(cooperative=True)
    one, other = FakePredictor(), FakePredictor()
    greenlets = [
        gevent.spawn(runner.logits, predictor, pictures(i))
        for i, predictor in enumerate([one, one, other, other, one], start=1)
    ]
    gevent.joinall(greenlets, timeout=30)
    assert [g.value[0, 0] for g in greenlets] == [1, 2, 3, 4, 5]
    assert one.passes == [[1, 2], [5]] and other.passes == [[3, 4]]


def test_grad_cam_never_overlaps_a_pass():
    runner = ForwardRunner(cooperative=True)
    predictor = FakePredictor()
    greenlets = [gevent.spawn(runner.logits, predictor, pictures(i)) for i in range(4)]
    greenlets += [gevent.spawn(runner.call, predictor.gradcam, pictures(9)) for _ in range(2)]
    greenlets += [gevent.spawn(runner.logits, predictor, pictures(i)) for i in range(4)]
    gevent.joinall(greenlets, timeout=30)
    assert all(g.successful() for g in greenlets)
    assert [g.value for g in greenlets[4:6]] == ["explained", "explained"]
    assert not predictor.overlapped
    assert len(predictor.threads) == 1  # the one model thread


def test_a_lone_connection_runs_its_pass_inline_and_a_busy_worker_hands_it_over(
    monkeypatch,
):
    runner = ForwardRunner(cooperative=True)
    predictor = FakePredictor(delay=0)
    monkeypatch.setattr(connections, "open", 1)  # only the caller's own connection
    assert runner.logits(predictor, pictures(3))[:, 0].tolist() == [3]
    assert predictor.threads == {threading.get_ident()}
    monkeypatch.setattr(connections, "open", 2)
    greenlet = gevent.spawn(runner.logits, predictor, pictures(4))
    greenlet.join(timeout=30)
    assert greenlet.value[:, 0].tolist() == [4]
    assert len(predictor.threads) == 2  # the second pass ran on the model thread


def test_outside_gevent_everything_runs_in_the_caller():
    assert not gevent_is_patched()  # the test process is not monkey-patched
    sizes: list[int] = []
    runner = ForwardRunner(on_pass=sizes.append)
    predictor = FakePredictor(delay=0)
    assert runner.logits(predictor, pictures(5, 6))[:, 0].tolist() == [5, 6]
    assert runner.call(predictor.gradcam, pictures(1)) == "explained"
    assert predictor.threads == {threading.get_ident()}
    assert sizes == [2]


class VerdictPredictor(FakePredictor):
    """Where each verdict came from: ``judged`` (one call: the model's pass, the gate's) or
    ``verdict`` on logits merged through the model thread."""

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.routes: list[tuple[str, int]] = []

    def judged(self, batch, pictures):
        self.routes.append(("judged", threading.get_ident()))
        return ("verdict", self.calibrated_logits(batch)[:, 0].tolist(), pictures)

    def verdict(self, logits, pictures):
        self.routes.append(("verdict", threading.get_ident()))
        return ("verdict", logits[:, 0].tolist(), pictures)


def test_a_lone_request_is_judged_inline_and_a_busy_worker_merges_then_judges(monkeypatch):
    runner = ForwardRunner(cooperative=True)
    predictor = VerdictPredictor()
    monkeypatch.setattr(connections, "open", 1)
    assert runner.verdict(predictor, pictures(3), ["photo"]) == ("verdict", [3], ["photo"])
    assert predictor.routes == [("judged", threading.get_ident())]  # judged inline
    monkeypatch.setattr(connections, "open", 2)
    greenlet = gevent.spawn(runner.verdict, predictor, pictures(4), ["other"])
    greenlet.join(timeout=30)
    assert greenlet.value == ("verdict", [4], ["other"])
    route, thread = predictor.routes[-1]
    assert route == "verdict" and thread != threading.get_ident()  # on the model thread


@pytest.mark.parametrize("rows", [1, 3])
def test_the_real_predictor_gives_the_same_answers_through_the_model_thread(rows, tiny_bundle):
    from imageclf import Predictor

    predictor = Predictor.load(tiny_bundle)
    batch = np.random.default_rng(rows).integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
    expected = predictor.calibrated_logits(batch)
    runner = ForwardRunner(cooperative=True)
    (greenlet,) = [gevent.spawn(runner.logits, predictor, batch)]
    greenlet.join(timeout=30)
    np.testing.assert_array_equal(greenlet.value, expected)


# ---------------------------------------------------------------- the batching knobs
def test_batch_wait_lets_requests_arriving_meanwhile_join_the_pass():
    """serve --batch-wait-ms: requests that arrive while an idle model waits go through
    in one pass; without the wait the first goes alone."""

    def passes(wait_s: float) -> list[list[int]]:
        predictor = FakePredictor(delay=0.0)
        runner = ForwardRunner(cooperative=True, wait_s=wait_s)
        greenlets = []
        for index in range(4):
            greenlets.append(gevent.spawn(runner.logits, predictor, pictures(index)))
            gevent.sleep(0.01)  # they arrive 10 ms apart
        gevent.joinall(greenlets, timeout=10, raise_error=True)
        assert [g.value[:, 0].tolist() for g in greenlets] == [[0], [1], [2], [3]]
        return predictor.passes

    assert passes(0.2) == [[0, 1, 2, 3]]
    assert passes(0.0)[0] == [0]


def test_max_batch_caps_a_merged_pass():
    predictor = FakePredictor(delay=0.05)
    runner = ForwardRunner(cooperative=True, max_rows=2)
    greenlets = run_all(runner, predictor, [(0,), (1,), (2,), (3,), (4,)])
    assert [g.value[:, 0].tolist() for g in greenlets] == [[0], [1], [2], [3], [4]]
    assert predictor.passes[0] == [0]
    assert all(len(p) <= 2 for p in predictor.passes) and len(predictor.passes) == 3


def test_the_knobs_reach_the_runner_and_are_checked(tmp_path):
    from click.testing import CliRunner
    from helpers import make_tiny_bundle

    from imageclf.cli import cli
    from imageclf.web import create_app
    from imageclf.web.extensions import get_service
    from imageclf.web.server import limits_from_env

    bundle = make_tiny_bundle(tmp_path / "m.safetensors")
    app = create_app(bundle, IMAGECLF_MAX_BATCH=8, IMAGECLF_BATCH_WAIT_MS=5.0)
    runner = get_service(app).runner
    assert runner.max_rows == 8 and runner.wait_s == 0.005
    assert limits_from_env({"IMAGECLF_BATCH_WAIT_MS": "0"}) == {"IMAGECLF_BATCH_WAIT_MS": 0.0}
    for args in (["--max-batch", "0"], ["--batch-wait-ms", "-1"], ["--max-batch", "x"]):
        result = CliRunner().invoke(cli, ["serve", "--model", str(bundle), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
