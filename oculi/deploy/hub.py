"""A run on the Hugging Face Hub: ``hf://owner/name[@revision]`` as a run folder (``resolve_run``: the bundle and
its exports downloaded into the HF cache, then verified like any folder), and pushing a run there (``push_files``,
the files chosen by ``files_to_push``). huggingface_hub is imported only when an address is used: predicting with
an ONNX export stays torch-free, and a local folder costs nothing."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

from ..errors import OculiError, first_line
from ..rundir import LABEL_SET_FILES, RunDir
from .exported import FILES, export_file

# owner/name as the Hub allows them (letters, digits, - _ .), and an optional @revision (branch, tag or commit).
ADDRESS = re.compile(r"^hf:/{1,2}([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$")
# Every export file a run can hold, by name (the reduced precisions beside model.onnx and model.tflite); each
# travels with its .json.
EXPORTS = (*FILES.values(), export_file("onnx", "int8"), export_file("onnx", "fp16"), export_file("tflite", "int8"))
# What a download fetches: the bundle and the exports (with their .json and companions, OpenVINO's model.bin);
# never the card, the figures or anything else a repo holds.
PULLED = [RunDir(Path()).model_json.name, RunDir(Path()).weights.name, *(f"{name}*" for name in EXPORTS), "model.bin"]


def is_address(path: str | Path) -> bool:
    """Whether ``path`` names a Hub repo rather than a folder (a ``Path`` made of one reads ``hf:/owner/name``)."""
    return str(path).startswith("hf:/")


def parse_address(address: str | Path) -> tuple[str, str | None]:
    """(repo id "owner/name", revision or None) of ``hf://owner/name[@revision]``; a one-line error otherwise."""
    match = ADDRESS.match(str(address))
    if not match or ".." in match.group(0):
        raise OculiError(f"{address}: not a Hugging Face model address (use hf://owner/name, or hf://owner/name@revision)")
    owner, name, revision = match.groups()
    return f"{owner}/{name}", revision


def resolve_run(path: str | Path, snapshot=None) -> Path:
    """The local folder of ``path``: itself, or for a Hub address its snapshot in the HF cache (the bundle and
    exports only). ``snapshot``: huggingface_hub's ``snapshot_download`` unless told otherwise (tests)."""
    if not is_address(path):
        return Path(path)
    repo_id, revision = parse_address(path)
    if snapshot is None:
        from huggingface_hub import snapshot_download as snapshot
    with hub_errors(repo_id):
        folder = Path(snapshot(repo_id, revision=revision, allow_patterns=PULLED, library_name="oculi"))
    if not RunDir(folder).model_json.is_file():
        raise OculiError(f"hf://{repo_id}: the repo holds no oculi bundle (no model.json)")
    return folder


def files_to_push(run_dir: str | Path) -> list[str]:
    """The files of a finished run that a push uploads, relative to it: the bundle, the card, each export whose
    .json vouches for it (with the files it names beside it), test_metrics.json and the figures. Never the
    checkpoint, the caches, the data or the lock."""
    run = RunDir(Path(run_dir))
    if not (run.model_json.is_file() and run.weights.is_file()):
        raise OculiError(f"{run_dir}: no bundle (model.json and model.safetensors) to push: is this a finished run?")
    names = [run.model_json.name, run.weights.name]
    for name in EXPORTS:
        names += _export_files(run.path, name)
    optional = [run.card, run.test_metrics, run.curves, run.confusion, *(getattr(run, f) for f in LABEL_SET_FILES)]
    names += [file.name for file in optional if file.is_file()]
    return names


def _export_files(folder: Path, name: str) -> list[str]:
    """``name`` (a folder: every file in it), the files its .json names as companions, then that .json; nothing
    when either the export or its .json is missing (one without the other cannot be used)."""
    file, meta_file = folder / name, folder / f"{name}.json"
    if not (file.exists() and meta_file.is_file()):
        return []
    try:
        companions = list((json.loads(meta_file.read_text()).get("companions") or {}))
    except (ValueError, AttributeError):
        companions = []
    inside = sorted(p.relative_to(folder).as_posix() for p in file.rglob("*") if p.is_file()) if file.is_dir() else [name]
    return inside + [c for c in companions if (folder / c).is_file()] + [meta_file.name]


def push_files(run_dir: str | Path, files: list[str], address: str, private: bool = False, token: str | None = None,
               message: str | None = None, api=None) -> str:
    """Upload ``files`` of ``run_dir`` to the model repo at ``address`` (made when missing) in one commit; the
    commit's URL. ``api``: an ``HfApi`` unless told otherwise (tests pass a fake)."""
    repo_id, revision = parse_address(address)
    if revision:
        raise OculiError(f"--to {address}: push to hf://owner/name (a branch is not taken)")
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(library_name="oculi")
    from huggingface_hub import CommitOperationAdd
    token = token or _saved_token(repo_id)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(run_dir) / name)) for name in files]
    with hub_errors(repo_id):
        api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=message or f"oculi push {Path(run_dir).name}",
                                 token=token, repo_type="model")
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def _saved_token(repo_id: str) -> str:
    """The token huggingface_hub would use (HF_TOKEN, or the one `hf auth login` saved); an error without one."""
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise OculiError(f"hf://{repo_id}: no Hugging Face token (pass --token, set HF_TOKEN or run `hf auth login`)")
    return token


@contextmanager
def hub_errors(repo_id: str):
    """Turn huggingface_hub's (and the network's) errors inside the block into one OculiError naming the repo."""
    try:
        yield
    except OculiError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the Hub or the network raised, one line for the user
        raise OculiError(f"hf://{repo_id}: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """What went wrong with a Hub call, in words (the error's own first line after them)."""
    from huggingface_hub import errors
    first = first_line(err, limit=None)
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, errors.RevisionNotFoundError):
        return f"no such revision ({first})"
    if isinstance(err, (errors.RepositoryNotFoundError, errors.GatedRepoError)) or status in (401, 403):
        return f"not found, or the token may not use it (authentication: check --token / HF_TOKEN) ({first})"
    if isinstance(err, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        return f"the Hub cannot be reached and the model is not in the HF cache ({first})"
    if isinstance(err, errors.HfHubHTTPError):
        return f"the Hub refused ({first})"
    if isinstance(err, OSError) or "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
        return f"the Hub cannot be reached (network: {first})"
    return f"{type(err).__name__}: {first}"
