"""Atomic file writes (a run folder never holds a half-written file, even after kill -9) and the
lock that gives one process a folder for as long as it works in it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; runs there are not protected from each other
    fcntl = None


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private, and some writers (safetensors) replace it with another private
        # file: set the mode last, so that results are shared like any file the user writes.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staging_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a private temporary folder inside ``folder``; on success each entry written in it replaces the one
    of that name in ``folder``, one rename each (a folder entry: the old one renamed aside first, then
    removed). Always removed at the end."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".stage.", suffix=".tmp"))
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            _publish(entry, folder / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(entry: Path, target: Path) -> None:
    os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~_UMASK)  # mkdtemp's folder is private
    if entry.is_dir() and target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old.tmp"))
        os.replace(target, aside / target.name)
        os.replace(entry, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(entry, target)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that ``atomic_path`` calls killed mid-write left in ``folder``; returns
    them. Only for a folder no other process is writing in (one whose lock this process holds)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 (a str with surrogate escapes, as the OS gave
    # it) is written back as its own bytes, so split.csv names the very file and reads back to it.
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_csv(path: str | Path, header: list[str], rows) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


# POSIX record locks never conflict within one process, so this process's own locks are also kept here.
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


@contextmanager
def exclusive_lock(path: str | Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold ``path`` (created if missing) for this process until the block ends, or raise ``busy(holder)``
    at once, ``holder`` naming the process that has it ("pid 123 on host").

    A POSIX record lock (lockf), not a lock file made with O_EXCL: the kernel drops it when its process
    ends in any way, kill -9 included, so a killed run never leaves a stale lock that blocks --resume.
    Unlike flock it is not shared with forked children (the image-decoding and batch-reading workers),
    which could otherwise outlive a killed parent and keep holding the folder."""
    path = Path(path)
    key = str(path.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            raise busy(f"pid {os.getpid()} on {socket.gethostname()}, this process")
        _HELD.add(key)
    try:
        with _locked_file(path, busy):
            yield
    finally:
        with _HELD_GUARD:
            _HELD.discard(key)


def _lock_holder(fd: int, wait: float = 1.0) -> str:
    """Who holds the lock on ``fd``, as its holder wrote it. The holder writes just after locking, so a
    process refused in between sees an empty file: it waits up to ``wait`` seconds for the words."""
    deadline = time.monotonic() + wait
    while True:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if holder or time.monotonic() > deadline:
            return holder or "another process"
        time.sleep(0.02)


@contextmanager
def _locked_file(path: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_UMASK)
    try:
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise busy(_lock_holder(fd)) from None
        # Who holds it, for the message another process gets; the file is never deleted, because a
        # process that opened it just before the unlink would lock a file nobody else can see.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a process refused by the next holder must not read this one's name
    finally:
        os.close(fd)  # releases the lock
