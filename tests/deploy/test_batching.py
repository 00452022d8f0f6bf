"""The batcher gathers concurrent work into few calls; the slots bound how much is taken on."""

import threading
import time

import pytest

from oculi.deploy.batching import Batcher, Slots


class Model:
    """Doubles each item; records every batch; the first call waits for ``gate`` when one is given."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches, self.gate, self.entered = [], gate, threading.Event()

    def __call__(self, items):
        self.entered.set()
        if self.gate is not None and not self.batches:
            self.gate.wait(5)
        self.batches.append(list(items))
        return [2 * x for x in items]


@pytest.fixture
def started():
    batchers = []

    def start(model, **kw):
        batcher = Batcher(model, **{"max_batch": 32, "max_wait_s": 0.005, **kw})
        batcher.start()
        batchers.append(batcher)
        return batcher
    yield start
    for b in batchers:
        b.stop()


def test_work_that_arrives_while_the_model_is_busy_goes_in_one_batch(started):
    gate = threading.Event()
    model = Model(gate)
    batcher = started(model)
    [first] = batcher.submit([0])
    assert model.entered.wait(5)  # the model is busy with the first request
    futures = [batcher.submit([i]) for i in range(1, 21)]  # 20 more requests meanwhile
    gate.set()
    assert first.result(5) == 0 and [f.result(5) for [f] in futures] == [2 * i for i in range(1, 21)]
    assert model.batches == [[0], list(range(1, 21))]


def test_a_batch_never_exceeds_max_batch_and_keeps_the_order(started):
    gate = threading.Event()
    model = Model(gate)
    batcher = started(model, max_batch=4)
    futures = batcher.submit(list(range(10)))
    gate.set()
    assert [f.result(5) for f in futures] == [2 * i for i in range(10)]
    assert max(map(len, model.batches)) <= 4


def test_a_lone_item_waits_about_max_wait(started):
    batcher = started(Model(), max_wait_s=0.05)
    began = time.monotonic()
    [future] = batcher.submit([3])
    assert future.result(5) == 6
    assert 0.04 < time.monotonic() - began < 2


def test_a_failing_batch_fails_its_requests_only(started):
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("boom")
        return items
    batcher = started(flaky, max_wait_s=0)
    [bad] = batcher.submit([1])
    with pytest.raises(ValueError, match="boom"):
        bad.result(5)
    [good] = batcher.submit([2])
    assert good.result(5) == 2


def test_stop_fails_what_still_waits_and_refuses_more():
    gate = threading.Event()
    model = Model(gate)
    batcher = Batcher(model, max_batch=1, max_wait_s=0)
    batcher.start()
    running = batcher.submit([1])
    assert model.entered.wait(5)
    waiting = batcher.submit([2])
    threading.Timer(0.1, gate.set).start()
    batcher.stop()
    assert running[0].result(5) == 2
    with pytest.raises(RuntimeError, match="stopping"):
        waiting[0].result(5)
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit([3])


def test_slots_take_all_or_nothing():
    slots = Slots(4)
    assert slots.take(3) and not slots.take(2) and slots.used == 3
    assert slots.take(1) and slots.used == 4
    slots.release(4)
    assert slots.take(4)
