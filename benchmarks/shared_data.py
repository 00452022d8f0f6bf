"""The project's shared datasets (../shared/data beside the repository), extracted once into the temp folder."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def extract_shared(archive: str, folder: str) -> Path:
    """``folder`` from ``../shared/data/<archive>``, extracted on first use."""
    tar = SHARED_DATA / archive
    target = Path(tempfile.gettempdir()) / f"oculi-bench-{folder}"
    if not (target / folder).is_dir():
        if not tar.is_file():
            raise SystemExit(f"no data: pass --data DIR or provide {tar}")
        with tarfile.open(tar) as opened:
            opened.extractall(target, filter="data")
    return target / folder
