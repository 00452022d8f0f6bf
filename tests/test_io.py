"""oculi.io: atomic writes (a file is the old one or the whole new one, never half of it, and is shared like
any file the user writes) and the lock that gives one process a folder (held across processes, refused
within one, released by the kernel when its holder dies, whatever its forked workers do)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from oculi.errors import OculiError
from oculi.io import (atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text, exclusive_lock,
                      remove_temp_files)

# A child that takes the lock on argv[1] (with "fork", also starts a worker that lives a minute, as
# training's decoding workers may), prints "<worker pid or 0> held", then waits for stdin to close.
HOLD_LOCK = """
import os, sys, time
from oculi.io import exclusive_lock
with exclusive_lock(sys.argv[1], RuntimeError):
    worker = os.fork() if sys.argv[2:] == ["fork"] else 0
    if worker == 0 and sys.argv[2:] == ["fork"]:
        time.sleep(60)
        os._exit(0)
    print(worker, "held", flush=True)
    sys.stdin.read()
"""


def _busy(holder):
    return OculiError(f"busy: {holder}")


def hold_lock_in_child(path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """The child process holding ``path``'s lock, and its forked worker's pid (0: none); it lets go when its
    stdin closes (``child.communicate("")``). tests/training's run-folder tests hold run folders with it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    worker, said = child.stdout.readline().split()
    assert said == "held"
    return child, int(worker)


# ---------------------------------------------------------------- the lock


def test_a_lock_held_by_another_process_is_refused_naming_it(tmp_path):
    child, _ = hold_lock_in_child(tmp_path / "lock")
    try:
        with pytest.raises(OculiError, match=f"busy: pid {child.pid} on "):
            with exclusive_lock(tmp_path / "lock", _busy):
                pass
    finally:
        child.communicate("")
    with exclusive_lock(tmp_path / "lock", _busy):  # released when its holder ended
        pass


# A holder that has locked the file but not yet written its name (the moment a second run can hit).
LOCK_THEN_NAME = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(0.3)
os.pwrite(fd, b"pid 4242 on elsewhere", 0)
sys.stdin.read()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks")
def test_a_refused_process_waits_for_the_holder_to_write_its_name(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", LOCK_THEN_NAME, str(tmp_path / "lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OculiError, match="busy: pid 4242 on elsewhere"):
            with exclusive_lock(tmp_path / "lock", _busy):
                pass
    finally:
        child.communicate("")


def test_a_lock_held_in_this_process_is_refused_too(tmp_path):
    with exclusive_lock(tmp_path / "lock", _busy):
        with pytest.raises(OculiError, match="this process"):
            with exclusive_lock(tmp_path / "lock", _busy):
                pass
    with exclusive_lock(tmp_path / "lock", _busy):
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers exist where fork does")
def test_a_killed_holder_releases_the_lock_though_its_forked_workers_live_on(tmp_path):
    # Training forks image-decoding workers while it holds its folder; a flock would stay held by them
    # after the run is killed -9, and the folder could not be resumed until they went away.
    child, worker = hold_lock_in_child(tmp_path / "lock", "fork")
    try:
        child.send_signal(signal.SIGKILL)
        child.wait()
        os.kill(worker, 0)  # the worker is still alive...
        with exclusive_lock(tmp_path / "lock", _busy):  # ...and the lock is free all the same
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


# ---------------------------------------------------------------- atomic writes

def test_atomic_files_are_readable_like_any_other_even_when_the_writer_replaces_the_temp_file(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))  # safetensors writes a new, private file
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"accuracy": 0.5})
    with pytest.raises(OSError, match="No space"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"accura')  # half the new file reaches the disk, then the disk is full
            raise OSError(28, "No space left on device")
    assert target.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_csv_and_text_files_read_back_byte_for_byte(tmp_path):
    atomic_write_csv(tmp_path / "split.csv", ["path", "split"], [["a,b.png", "train"], ["c.png", "test"]])
    assert (tmp_path / "split.csv").read_text() == 'path,split\n"a,b.png",train\nc.png,test\n'
    name = os.fsdecode(b"caf\xe9.png")  # not UTF-8: a str with a surrogate escape, as the OS gives it
    atomic_write_text(tmp_path / "names.txt", name)
    assert (tmp_path / "names.txt").read_bytes() == b"caf\xe9.png"


def test_temporary_files_a_killed_write_left_are_removed_and_nothing_else(tmp_path):
    left = [tmp_path / ".checkpoint.safetensors.k1ll3d.tmp", tmp_path / ".model.json.x.tmp"]
    kept = [tmp_path / "model.json", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in left + kept:
        path.write_bytes(b"x")
    assert sorted(remove_temp_files(tmp_path)) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
