"""`oculi app`: its bad roots and ports are one-line errors (exit 2) before anything listens; a root another
app holds is refused."""

from __future__ import annotations

import subprocess
import sys

from oculi.cli import main
from oculi.io import exclusive_lock


def test_a_missing_root_is_a_one_line_error(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: --root {tmp_path / 'missing'}: no such folder\n"


def test_a_bad_port_is_a_one_line_error(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path), "--port", "70000"]) == 2
    assert capsys.readouterr().err.startswith("error: --port must be from 0 to 65535")
    assert list(tmp_path.iterdir()) == []  # the port is checked before the app claims the root


def test_a_root_another_app_holds_is_refused(tmp_path):
    (tmp_path / ".oculi-app").mkdir()
    with exclusive_lock(tmp_path / ".oculi-app" / "app.lock", RuntimeError):  # as a running app holds it
        done = subprocess.run([sys.executable, "-m", "oculi", "app", "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "another oculi app works on it" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
