"""The Hugging Face Hub without a hub: the files a push stages, a push against a fake ``HfApi``, and loading
``hf://owner/name`` from an HF cache laid out as huggingface_hub lays it out (offline), verified like a folder."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import oculi
from oculi.cli import main
from oculi.deploy.hub import files_to_push, parse_address, push_files, resolve_run
from oculi.deploy.predict import Classifier
from oculi.errors import BundleError, OculiError

BUNDLE_AND_EXPORT = ("model.json", "model.safetensors", "model.onnx", "model.onnx.json")


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_run):
    """An MLP trained on the CPU (so with model.onnx): (run folder, data). Read only."""
    data = tiny_data(per_class=6)
    return tiny_run(data, model="mlp", epochs=1).run_dir, data


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


class FakeApi:
    """Records what a push asks of the Hub."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail:
            raise self.fail

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, list(operations), kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def fake_cache(cache: Path, repo_id: str, run_dir: Path, files=BUNDLE_AND_EXPORT) -> Path:
    """huggingface_hub's cache of ``repo_id`` holding ``files`` of the run: blobs by digest, a snapshot of
    symlinks to them and refs/main naming the snapshot; the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in files:
        data = (run_dir / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def offline_snapshot(cache: Path):
    from huggingface_hub import snapshot_download
    return functools.partial(snapshot_download, cache_dir=cache, local_files_only=True)


# ------------------------------------------------------------ pushing


def test_a_push_stages_the_bundle_exports_metrics_and_figures_never_checkpoints_or_data(run_copy):
    (run_copy / "checkpoint.safetensors").write_bytes(b"resume state")
    (run_copy / "model.xml").write_text("<xml/>")  # an export without its .json cannot be used: not pushed
    files = files_to_push(run_copy)
    assert files[:4] == list(BUNDLE_AND_EXPORT)
    assert {"test_metrics.json", "curves.png", "confusion_matrix.png"} <= set(files)
    assert not {"checkpoint.safetensors", "split.csv", "config.json", "metrics.jsonl", "model.xml"} & set(files)
    assert all((run_copy / name).is_file() for name in files)


def test_an_openvino_export_travels_with_its_weights(run_copy):
    (run_copy / "model.xml").write_text("<xml/>")
    (run_copy / "model.bin").write_bytes(b"weights")
    (run_copy / "model.xml.json").write_text('{"companions": {"model.bin": "0"}}')
    files = files_to_push(run_copy)
    assert files[files.index("model.xml"):files.index("model.xml") + 3] == ["model.xml", "model.bin", "model.xml.json"]


def test_a_folder_without_a_bundle_is_refused(tmp_path):
    with pytest.raises(OculiError, match="no bundle"):
        files_to_push(tmp_path)


def test_push_writes_the_card_and_sends_every_staged_file_in_one_commit(run_copy):
    api = FakeApi()
    assert not (run_copy / "README.md").exists()  # tiny runs write no report, hence no card
    url, files = oculi.push(run_copy, "hf://someone/tiny", private=True, token="hf_x", message="first", api=api)
    assert (run_copy / "README.md").is_file() and "README.md" in files
    (create, repo_id, kwargs), (commit, repo_id2, operations, commit_kwargs) = api.calls
    assert (create, repo_id, repo_id2) == ("create_repo", "someone/tiny", "someone/tiny")
    assert kwargs["private"] is True and kwargs["exist_ok"] is True and kwargs["token"] == "hf_x"
    assert [op.path_in_repo for op in operations] == files
    assert all(Path(op.path_or_fileobj) == run_copy / op.path_in_repo for op in operations)
    assert commit_kwargs["commit_message"] == "first" and url.endswith("/commit/abc")


def test_a_tampered_bundle_is_not_pushed(run_copy):
    weights = run_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="checksum"):
        oculi.push(run_copy, "hf://someone/tiny", token="hf_x", api=FakeApi())


def test_hub_failures_are_one_line_naming_the_repo(run_copy, monkeypatch, tmp_path):
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    files = files_to_push(run_copy)
    with pytest.raises(OculiError, match=r"hf://someone/tiny: the Hub cannot be reached \(network"):
        push_files(run_copy, files, "hf://someone/tiny", token="hf_x", api=FakeApi(ConnectionError("refused")))
    response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    with pytest.raises(OculiError, match="hf://someone/tiny: not found, or the token may not use it"):
        push_files(run_copy, files, "hf://someone/tiny", token="bad",
                   api=FakeApi(HfHubHTTPError("401 Unauthorized", response=response)))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(OculiError, match="no Hugging Face token"):
        push_files(run_copy, files, "hf://someone/tiny", api=FakeApi())


@pytest.mark.parametrize("address", ["someone/tiny", "hf://tiny", "hf://a/b/c", "https://huggingface.co/a/b",
                                     "hf://a/../b"])
def test_a_bad_address_is_refused(address):
    with pytest.raises(OculiError, match="not a Hugging Face model address"):
        parse_address(address)


def test_parse_address_takes_a_revision():
    assert parse_address("hf://someone/tiny") == ("someone/tiny", None)
    assert parse_address("hf://someone/tiny@v1.0") == ("someone/tiny", "v1.0")


def test_cli_push_with_a_bad_to_is_one_line_and_fails(trained, capsys):
    code = main(["push", str(trained[0]), "--to", "someone/tiny"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "hf://owner/name" in err


# ------------------------------------------------------------ loading


def test_a_hub_model_loads_from_the_cache_and_predicts_as_its_folder(trained, tmp_path, monkeypatch):
    run_dir, data = trained
    fake_cache(tmp_path / "hub", "someone/tiny", run_dir)
    folder = resolve_run("hf://someone/tiny", snapshot=offline_snapshot(tmp_path / "hub"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUNDLE_AND_EXPORT)
    images = sorted(str(p) for p in (data / "red").iterdir())[:4]
    expected = Classifier.load(run_dir, device="cpu").predict_proba(images)
    np.testing.assert_allclose(Classifier.load(folder, device="cpu").predict_proba(images), expected, atol=1e-6)
    from huggingface_hub import constants  # oculi.load's own download, offline on that cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    np.testing.assert_allclose(oculi.load("hf://someone/tiny", device="cpu").predict_proba(images), expected, atol=1e-6)


def test_a_tampered_download_is_refused(trained, tmp_path):
    snapshot = fake_cache(tmp_path / "hub", "someone/tiny", trained[0])
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    folder = resolve_run("hf://someone/tiny", snapshot=offline_snapshot(tmp_path / "hub"))
    with pytest.raises(BundleError, match="model.safetensors: checksum does not match"):
        Classifier.load(folder, device="cpu")


def test_a_model_neither_reachable_nor_cached_is_one_line(tmp_path):
    (tmp_path / "hub").mkdir()
    with pytest.raises(OculiError, match="hf://someone/absent: the Hub cannot be reached and the model is not"):
        resolve_run("hf://someone/absent", snapshot=offline_snapshot(tmp_path / "hub"))


def test_cli_predict_on_a_hub_address_works_offline_without_torch(trained, tmp_path):
    run_dir, data = trained
    fake_cache(tmp_path / "hub", "someone/tiny", run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    image = str(data / "red" / "img_00.png")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "oculi", "predict", "hf://someone/tiny",
                             image, "--csv"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert image in result.stdout and "engine: onnx" in result.stderr
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported and "huggingface_hub" in imported
