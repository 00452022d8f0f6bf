"""Decoding once: the decoded-image cache is reused while the files are unchanged, and only then."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oculi.data import loading
from oculi.data.cache import ArrayCache
from oculi.data.loading import RowView, decode_source
from oculi.data.sources import open_source
from oculi.data.transforms import Preprocessing
from tests.conftest import make_class_folder, write_image

PREP = Preprocessing((16, 16), 3)


@pytest.fixture
def folder(tmp_path):
    root = make_class_folder(tmp_path / "colours", per_class=6)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def _decode(root, cache, prep=PREP):
    return decode_source(open_source(str(root)), prep, cache=cache)


def _entries(cache):
    return sorted(p.name for p in cache.folder.iterdir() if not p.name.startswith("."))


def _no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(loading, "_decode_into", fail)


def test_a_second_decode_maps_the_cached_pixels_back(folder, tmp_path, monkeypatch):
    cache = ArrayCache("images", root=tmp_path / "cache")
    first = _decode(folder, cache)
    assert len(first.rows) == 18 and list(first.failed) == ["red/broken.jpg"]
    _no_decoding(monkeypatch)
    second = _decode(folder, cache)
    assert second.rows == first.rows and second.failed == first.failed  # bad files stay reported
    assert torch.equal(second.images, first.images)


@pytest.mark.parametrize("change", ["rewrite", "add", "remove"])
def test_a_changed_added_or_removed_file_means_decoding_again(folder, tmp_path, change):
    cache = ArrayCache("images", root=tmp_path / "cache")
    before = _decode(folder, cache)
    target = folder / "green" / "img_00.png"
    if change == "rewrite":
        write_image(target, np.random.default_rng(7), size=(30, 30), colour=2)
        os.utime(target, ns=(1, 1))  # even an old modification time: the size differs
    elif change == "add":
        write_image(folder / "green" / "new.png", np.random.default_rng(7))
    else:
        target.unlink()
    after = _decode(folder, cache)
    assert len(_entries(cache)) == 2
    if change == "rewrite":
        row = lambda d: d.images[d.rows["green/img_00.png"]]  # noqa: E731
        assert not torch.equal(row(before), row(after))
    else:
        assert len(after.rows) == len(before.rows) + (1 if change == "add" else -1)


def test_another_image_size_is_another_entry_and_no_cache_writes_nothing(folder, tmp_path):
    cache = ArrayCache("images", root=tmp_path / "cache")
    small, large = _decode(folder, cache), _decode(folder, cache, Preprocessing((24, 20), 3))
    assert small.images.shape[-2:] == (16, 16) and large.images.shape[-2:] == (24, 20)
    assert len(_entries(cache)) == 2
    _decode(folder, None)
    assert len(_entries(cache)) == 2


def test_a_damaged_entry_is_decoded_again(folder, tmp_path):
    cache = ArrayCache("images", root=tmp_path / "cache")
    expected = _decode(folder, cache).images.clone()  # a copy: the entry's mapping is about to go
    damaged = cache.folder / _entries(cache)[0] / "array.npy"
    (damaged.parent / "new").write_bytes(b"garbage")
    os.replace(damaged.parent / "new", damaged)  # replaced, not truncated under a live mapping
    again = _decode(folder, cache)
    assert torch.equal(again.images, expected)


def test_a_run_uses_the_cache_and_no_cache_bypasses_it(folder, tmp_path, private_cache, monkeypatch):
    import oculi
    options = dict(model="mlp", epochs=1, image_size=16, progress=False)
    first = oculi.train(str(folder), out=str(tmp_path / "a"), **options)
    assert len(list((private_cache / "images").iterdir())) == 1
    _no_decoding(monkeypatch)
    second = oculi.train(str(folder), out=str(tmp_path / "b"), **options)
    assert second.test_metrics == first.test_metrics and second.skipped == first.skipped
    with pytest.raises(AssertionError, match="decoded again"):
        oculi.train(str(folder), out=str(tmp_path / "c"), cache=False, **options)


def test_splits_above_the_threshold_stream_from_the_cache_and_train_the_same(folder, tmp_path, monkeypatch,
                                                                             private_cache):
    import oculi
    options = dict(model="fast-cnn", epochs=2, image_size=16, progress=False)
    in_memory = oculi.train(str(folder), out=str(tmp_path / "a"), **options)
    monkeypatch.setattr(loading, "stream_threshold", lambda: 0.0)
    decoded = _decode(folder, ArrayCache("images"), Preprocessing((16, 16), 3))
    records = open_source(str(folder)).records
    view = decoded.select(records)
    assert isinstance(view.images, RowView) and view.images.shape == (18, 3, 16, 16)
    copied = loading.DecodedImages(decoded.images, decoded.rows, decoded.failed).select(records)  # not mapped
    assert torch.equal(view.images[torch.arange(18).flip(0)], copied.images.flip(0))
    assert torch.equal(view.images[2:9:3], copied.images[2:9:3])
    streamed = oculi.train(str(folder), out=str(tmp_path / "b"), **options)
    assert streamed.test_metrics == in_memory.test_metrics


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.integers(0, 11), min_size=1, max_size=12),
       index=st.lists(st.integers(0, 11), max_size=20), start=st.integers(0, 12), step=st.integers(1, 4))
def test_a_row_view_indexes_like_the_tensor_it_stands_for(rows, index, start, step):
    images = torch.arange(12 * 2 * 3 * 3, dtype=torch.uint8).view(12, 2, 3, 3)
    rows = torch.tensor(rows)
    view, tensor = RowView(images, rows), images[rows]
    index = torch.tensor([i % len(rows) for i in index], dtype=torch.long)
    assert torch.equal(view[index], tensor[index])
    assert torch.equal(view[start::step], tensor[start::step])
    assert view.shape == tensor.shape and view.nbytes == tensor.nbytes and len(view) == len(tensor)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_streamed_batches_come_in_order_from_worker_processes(workers):
    images = torch.arange(40 * 3 * 2 * 2, dtype=torch.uint8).view(40, 3, 2, 2)
    view = RowView(images, torch.arange(39, -1, -1))  # rows in reverse
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    batches = list(loading.streamed_batches(view, list(order.split(8)), workers=workers))
    assert len(batches) == 5
    assert torch.equal(torch.cat(batches), images.flip(0)[order])
    # Fewer images than a batch: one short batch, as the in-memory path gives.
    (short,) = loading.streamed_batches(view, [order[:5]], workers=workers)
    assert torch.equal(short, images.flip(0)[order[:5]])


def test_a_large_jpeg_is_decoded_for_training_as_predict_drafts_it_with_its_full_size_facts(tmp_path):
    from PIL import Image

    from oculi.data.contained import prepare_file
    y, x = np.mgrid[0:240, 0:320]
    pixels = np.stack([x * 255 // 320, y * 255 // 240, (x + y) % 256], -1).astype(np.uint8)
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "set" / name / "big.jpg", quality=90)
    decoded = _decode(tmp_path / "set", None)  # 16 px input: 240 x 320 is drafted to 1/8
    path = tmp_path / "set" / "a" / "big.jpg"
    drafted, full = prepare_file(path, PREP, draft=True), prepare_file(path, PREP)
    assert not np.array_equal(drafted, full)  # the two decodings differ here ...
    assert np.array_equal(decoded.images[decoded.rows["a/big.jpg"]].numpy(), drafted)  # ... training drafts
    facts = decoded.facts["a/big.jpg"]
    assert (facts.height, facts.width) == (240, 320)  # the data check sees the file, not the draft
