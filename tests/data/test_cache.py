"""The on-disk cache's temporary entries: a killed writer's are removed and never counted, a live
writer's are left alone, and two processes writing one entry at once leave one sound entry."""

import json
import multiprocessing
import os
import signal
import socket
import time

import numpy as np
import pytest
import torch

from oculi.data import cache as cache_module
from oculi.data.cache import WRITER_FILE, ArrayCache, TensorCache, cache_size, clear_cache

fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _temp_keys(folder):
    return [name.split(".")[1] for name in _temps(folder)]  # ".<key>.<random>"


def _killed_mid_write(cache: ArrayCache, key: str) -> None:
    """In a forked child: start writing ``key``, then die as kill -9 (no cleanup runs)."""
    with cache.writing(key, (2, 3)) as (array, _):
        array[:] = 7
        os.kill(os.getpid(), signal.SIGKILL)


def _in_child(target, *args) -> int:
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(60)
    return child.exitcode


@fork
def test_a_killed_writers_folder_is_not_counted_and_goes_with_the_next_write(tmp_path):
    cache = ArrayCache("images", root=tmp_path)
    assert _in_child(_killed_mid_write, cache, "k1") == -signal.SIGKILL
    assert _temp_keys(cache.folder) == ["k1"]
    assert _in_child(_killed_mid_write, cache, "k2") == -signal.SIGKILL
    assert _temp_keys(cache.folder) == ["k2"]  # k2's write removed k1's leftover
    with cache.writing("k3", (1, 1)):
        assert _temp_keys(cache.folder) == ["k3"]
    assert _temps(cache.folder) == [] and cache.get("k3") is not None


@fork
def test_cache_info_removes_a_killed_writers_folder_and_clear_keeps_a_live_one(tmp_path):
    cache = ArrayCache("images", root=tmp_path)
    assert _in_child(_killed_mid_write, cache, "dead") == -signal.SIGKILL
    assert cache_size(tmp_path) == (0, 0) and _temps(cache.folder) == []
    with cache.writing("live", (4, 4)) as (array, index):
        array[:] = 3
        assert cache_size(tmp_path) == (0, 0)  # in progress: not an entry yet
        assert clear_cache(tmp_path) == (0, 0)
        assert len(_temps(cache.folder)) == 1
    pixels, _ = cache.get("live")
    assert (pixels == 3).all()


def _fake_temp(folder, name, writer: dict | None, age_s: float = 0):
    path = folder / name
    path.mkdir(parents=True)
    if writer is not None:
        (path / WRITER_FILE).write_text(json.dumps(writer))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_writer_that_cannot_be_checked_is_judged_by_age(tmp_path):
    me = {"pid": os.getpid(), "started": cache_module._process_start(os.getpid()), "host": socket.gethostname()}
    old = cache_module.STALE_AFTER_S + 60
    kept = [_fake_temp(tmp_path, ".alive.1", me, age_s=old),  # this very process: alive, however old
            _fake_temp(tmp_path, ".far.1", {**me, "host": "elsewhere"}),  # another host: only its age says
            _fake_temp(tmp_path, ".legacy.1", None)]  # no writer.json (an older oculi): likewise
    gone = [_fake_temp(tmp_path, ".far.2", {**me, "host": "elsewhere"}, age_s=old),
            _fake_temp(tmp_path, ".legacy.2", None, age_s=old)]
    if me["started"] is not None:  # where /proc tells when a process started: a reused pid is not the writer
        gone.append(_fake_temp(tmp_path, ".reused.1", {**me, "started": "1"}))
    cache_module.remove_stale_temps(tmp_path)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)


def test_killed_feature_writes_are_cleaned_when_old(tmp_path):
    features = TensorCache("features", root=tmp_path)
    features.put("a", {"x": torch.zeros(3)})
    leftover = features.folder / ".b.safetensors.123.tmp"  # io.atomic_path's temporary file
    leftover.write_bytes(b"half")
    assert cache_size(tmp_path)[0] == 1 and leftover.exists()  # too young to tell from a live write
    then = time.time() - cache_module.STALE_AFTER_S - 60
    os.utime(leftover, (then, then))
    features.put("c", {"x": torch.ones(3)})
    assert not leftover.exists() and cache_size(tmp_path)[0] == 2


def _write_together(cache: ArrayCache, key: str, barrier, value: int) -> None:
    """Both writers are inside ``writing`` before either publishes."""
    with cache.writing(key, (5, 6)) as (array, index):
        array[:] = value
        index["rows"] = {"a": 0}
        barrier.wait(30)


@fork
def test_two_processes_writing_one_entry_at_once_both_succeed_with_one_sound_entry(tmp_path):
    cache = ArrayCache("images", root=tmp_path)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_write_together, args=(cache, "same", barrier, 9)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    pixels, index = cache.get("same")
    assert pixels.shape == (5, 6) and (pixels == 9).all() and index == {"rows": {"a": 0}}
    assert sorted(p.name for p in cache.folder.iterdir()) == ["same"]
    assert np.load(cache.folder / "same" / "array.npy").sum() == 9 * 30
