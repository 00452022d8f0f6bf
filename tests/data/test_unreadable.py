"""A file that cannot be read gives an ``Unreadable``: its kind, for programs, and the reason users read
(word for word what the CLI, skipped.csv and the server show); it crosses process boundaries intact."""

from __future__ import annotations

import io
import os
import pickle

import pytest
from PIL import Image

from oculi.data import unreadable
from oculi.data.children import can_fork, each_in_worker, in_worker, map_in_children, worker_pool
from oculi.data.contained import prepare_file, prepare_file_with_facts, prepare_files
from oculi.data.transforms import Preprocessing
from oculi.data.unreadable import KINDS, Unreadable
from oculi.errors import ImageDecodeError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

PREP = Preprocessing((8, 8), 3)


def png_bytes(size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


# (file name, its bytes, the kind, the reason as users read it today)
BAD = [
    ("cut.png", lambda: png_bytes()[:60], unreadable.TRUNCATED, "truncated or corrupt image data"),
    ("cut.jpg", lambda: jpeg_bytes()[:2000], unreadable.TRUNCATED, "truncated or corrupt image data"),
    ("empty.png", lambda: b"", unreadable.EMPTY_FILE, "empty file"),
    ("text.png", lambda: b"this is not an image\n" * 10, unreadable.NOT_AN_IMAGE, "not an image"),
    ("notes.txt", png_bytes, unreadable.UNSUPPORTED_FORMAT, "unsupported format"),
]
TOO_LARGE = "image too large (0.0016 megapixels, limit 0.001; raise with OCULI_MAX_IMAGE_PIXELS)"


@pytest.mark.parametrize("name, data, kind, reason", BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_gives_its_kind_and_todays_reason(tmp_path, name, data, kind, reason):
    path = tmp_path / name
    path.write_bytes(data())
    assert prepare_file(path, PREP) == Unreadable(kind, reason)
    assert prepare_file(path, PREP, draft=True) == Unreadable(kind, reason)
    assert prepare_file_with_facts(path, PREP) == Unreadable(kind, reason)
    if kind != unreadable.UNSUPPORTED_FORMAT:  # bytes have no file name to judge by
        assert prepare_file(path.read_bytes(), PREP) == Unreadable(kind, reason)


def test_a_missing_file_and_a_large_one_give_their_kinds(tmp_path, monkeypatch):
    assert prepare_file(tmp_path / "gone.png", PREP) == Unreadable(
        unreadable.CANNOT_READ, "cannot read file (No such file or directory)")
    monkeypatch.setenv("OCULI_MAX_IMAGE_PIXELS", "1000")
    (tmp_path / "big.png").write_bytes(png_bytes((40, 40)))
    assert prepare_file(tmp_path / "big.png", PREP) == Unreadable(unreadable.TOO_LARGE, TOO_LARGE)


def test_the_decode_error_carries_the_kind_and_pickles_whole(tmp_path):
    err = ImageDecodeError(tmp_path / "a.png", "empty file", unreadable.EMPTY_FILE)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, again.kind, str(again)) == (err.path, err.reason, err.kind, str(err))
    assert Unreadable.of(again) == Unreadable(unreadable.EMPTY_FILE, "empty file")


def test_an_unreadable_round_trips_pickling_and_refuses_an_unknown_kind():
    for kind in KINDS:
        value = Unreadable(kind, f"the {kind} reason")
        assert pickle.loads(pickle.dumps(value)) == value
    with pytest.raises(ValueError, match="unknown kind"):
        Unreadable("not an image", "not an image")  # a reason is no kind
    assert len(set(KINDS)) == len(KINDS)


@pytest.mark.skipif(not can_fork(), reason="worker processes fork: Linux only")
def test_worker_processes_send_an_unreadable_back_intact(tmp_path):
    """Through the pool of worker processes and through the child processes of the crash recovery."""
    good, bad = tmp_path / "good.png", tmp_path / "cut.png"
    good.write_bytes(png_bytes())
    bad.write_bytes(png_bytes()[:60])
    truncated = Unreadable(unreadable.TRUNCATED, "truncated or corrupt image data")
    outcomes = list(prepare_files([good, bad, good], PREP, workers=2))
    assert outcomes[1] == truncated and type(outcomes[1]) is Unreadable
    assert [o.shape for o in (outcomes[0], outcomes[2])] == [(3, 8, 8)] * 2
    again = list(map_in_children(lambda path: prepare_file(path, PREP), [good, bad]))
    assert again[1] == truncated and again[0].shape == (3, 8, 8)


@pytest.mark.skipif(not can_fork(), reason="worker processes fork: Linux only")
def test_a_worker_pool_holds_a_function_that_could_not_be_pickled():
    offset = 10
    pool = worker_pool(lambda x: (x + offset, os.getpid()), workers=2)  # a closure: inherited, never sent
    try:
        value, pid = pool.submit(in_worker, 1).result()
        assert value == 11 and pid != os.getpid()
        assert [v for v, _ in pool.submit(each_in_worker, [1, 2, 3]).result()] == [11, 12, 13]
    finally:
        pool.shutdown()


def test_a_header_that_cannot_be_read_is_unreadable_with_its_kind(tmp_path):
    from oculi.check.hashing import file_facts

    cut = tmp_path / "cut.png"
    cut.write_bytes(b"\x89PNG\r\n\x1a\n")
    text = tmp_path / "notes.jpg"
    text.write_text("not pixels")
    outcomes = [file_facts(cut), file_facts(text), file_facts(tmp_path / "gone.png")]
    assert all(isinstance(o, Unreadable) for o in outcomes)
    assert outcomes[2].kind == "cannot_read" and "cannot read file" in outcomes[2].reason
