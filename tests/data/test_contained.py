"""A native decoder crash costs one file: worker processes die in its place, the run goes on and says which."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest
from PIL import Image

import oculi
from oculi.data import decode
from oculi.data.children import ChildDied, can_fork, map_in_children, stream_in_child
from oculi.data.contained import prepare_file, prepare_files
from oculi.data.unreadable import CRASHED, DECODER_CRASHED, Unreadable
from oculi.data.loading import decode_source
from oculi.data.sources import open_source
from oculi.data.transforms import Preprocessing
from tests.conftest import make_class_folder

pytestmark = [pytest.mark.skipif(not can_fork(), reason="containment forks: Linux only"),
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")]

PREP = Preprocessing((8, 8), 3)
CRASH_SIZE = (13, 7)  # (width, height) that only the crashing test files have


def crash() -> None:
    """What a segmentation fault in a decoder does to its process, without a core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


@pytest.fixture
def crashing_decoder(monkeypatch):
    """The decoder dies on the images of CRASH_SIZE. Worker processes are forked: they inherit the patch."""
    real = decode._decode
    parent = os.getpid()

    def decode_or_crash(image, data, channels):
        if image.size == CRASH_SIZE:
            if os.getpid() == parent:  # pytest.fail: a BaseException, which decode_image does not swallow
                pytest.fail("decoded in the test process: a real crash would have killed the run")
            crash()
        return real(image, data, channels)

    monkeypatch.setattr(decode, "_decode", decode_or_crash)


def write_crasher(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", CRASH_SIZE, (1, 2, 3)).save(path)
    return path


@pytest.mark.parametrize("per_class", [30, 2], ids=["many-chunks", "one-chunk"])
def test_a_decoder_crash_skips_that_file_and_decodes_the_rest(tmp_path, crashing_decoder, per_class):
    root = make_class_folder(tmp_path / "data", per_class=per_class)
    write_crasher(root / "green" / "img_00b.png")  # sorted among the others, mid-folder
    decoded = decode_source(open_source(str(root)), PREP)
    assert decoded.failed == {"green/img_00b.png": "decoder crashed"}
    assert len(decoded.rows) == 3 * per_class
    for path, row in decoded.rows.items():  # every other file has its own pixels
        assert np.array_equal(decoded.images[row].numpy(), prepare_file(root / path, PREP))


def test_crashes_at_chunk_edges_and_side_by_side_cost_only_those_files(tmp_path, crashing_decoder):
    good = make_class_folder(tmp_path / "data", per_class=50, classes=("a", "b", "c"))
    paths = sorted(good.rglob("*.png"))
    crashers = {0, 63, 64, 65, 100, 149}  # first and last of a chunk of 64, neighbours, the very last
    for i in crashers:
        paths[i] = write_crasher(tmp_path / "bad" / f"{i}.png")
    results = list(prepare_files(paths, PREP, workers=2))
    assert [i for i, r in enumerate(results) if isinstance(r, Unreadable)] == sorted(crashers)
    assert {results[i] for i in crashers} == {CRASHED} == {Unreadable(DECODER_CRASHED, "decoder crashed")}
    assert all(isinstance(r, np.ndarray) and r.shape == (3, 8, 8) for i, r in enumerate(results) if i not in crashers)


def test_prediction_reports_the_crasher_and_predicts_the_rest(tmp_path, crashing_decoder):
    data = make_class_folder(tmp_path / "data", per_class=4)
    run = oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / "run"), progress=False)
    files = [data / "red" / "img_00.png", write_crasher(tmp_path / "crash.png"), data / "blue" / "img_01.png"]
    failures = []
    predictions = list(oculi.load(run.run_dir).predict_files(files, failures=failures))
    assert [p.source for p in predictions] == [str(files[0]), str(files[2])]
    assert failures == [(str(files[1]), "decoder crashed")]


# ---- map_in_children --------------------------------------------------------------------------------

def _square_or_die(i: int) -> int:
    if i in (3, 4):
        crash()
    if i == 6:
        time.sleep(60)
    return i * i


def test_children_give_results_in_order_and_a_death_for_each_item_that_killed_one():
    outcomes = list(map_in_children(_square_or_die, list(range(10)), workers=2, run_length=4, timeout=1))
    assert outcomes[3] == outcomes[4] == ChildDied("crashed", "SIGABRT")
    assert outcomes[6] == ChildDied("timed out", "over 1 s")
    assert [o for i, o in enumerate(outcomes) if i not in (3, 4, 6)] == [i * i for i in (0, 1, 2, 5, 7, 8, 9)]


_poisoned = False


def _poison_then_crash(i: int) -> int:
    """Item 1 leaves its process corrupt; the next item of that process crashes on it. Alone, all succeed."""
    global _poisoned
    if _poisoned:
        crash()
    _poisoned = i == 1
    return i


def test_an_item_is_blamed_only_for_a_crash_in_a_fresh_child():
    assert list(map_in_children(_poison_then_crash, list(range(4)), run_length=4)) == [0, 1, 2, 3]


def _fail_on_two(i: int) -> int:
    if i == 2:
        raise ValueError("a bug, not a crash")
    return i


def test_an_exception_in_a_child_is_raised_here():
    with pytest.raises(ValueError, match="a bug, not a crash"):
        list(map_in_children(_fail_on_two, list(range(4))))


# ---- stream_in_child --------------------------------------------------------------------------------

def _counting_then(end: str):
    """A stream of 0, 1, 2, then ``end``: "done", "crash" (the child dies), "raise" (a bug), "hang"."""
    def produce():
        yield from range(3)
        if end == "crash":
            crash()
        if end == "raise":
            raise ValueError("a bug in the stream")
        if end == "hang":
            time.sleep(60)
    return produce


@pytest.mark.parametrize("end, tail", [("done", []), ("crash", [ChildDied("crashed", "SIGABRT")]),
                                       ("hang", [ChildDied("timed out", "over 1 s")])])
def test_a_stream_gives_its_items_then_how_its_child_ended(end, tail):
    assert list(stream_in_child(_counting_then(end), timeout=1)) == [0, 1, 2, *tail]


def test_an_exception_in_the_stream_is_raised_here_after_its_items():
    got = []
    with pytest.raises(ValueError, match="a bug in the stream"):
        got.extend(stream_in_child(_counting_then("raise")))
    assert got == [0, 1, 2]


def _pids():
    while True:
        yield os.getpid()


def test_leaving_a_stream_kills_its_child():
    stream = stream_in_child(_pids)
    child = next(stream)
    assert child != os.getpid()  # computed in another process
    stream.close()
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(child, 0)
