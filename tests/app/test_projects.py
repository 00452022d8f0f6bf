"""Projects through the app's API: made from a folder of the root or from uploads, their counts and images,
names and paths that would leave the root refused, fixes moved and moved back (no training here)."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from oculi.app import projects as projects_module
from oculi.app import server as server_module
from tests.app.conftest import app_client
from tests.conftest import make_class_folder


def png(size=(16, 16), colour=0) -> bytes:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[..., colour] = 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(root):
    with app_client(root) as client:
        yield client


def test_a_project_from_a_folder_shows_its_classes_counts_and_images(client):
    assert client.get("/api/folders").json()["folders"] == ["colours"]
    made = client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    assert made.status_code == 200, made.text
    project = client.get("/api/projects/colours").json()
    assert [(c["name"], c["count"]) for c in project["classes"]] == [("blue", 6), ("green", 6), ("red", 6)]
    assert project["check"] is None and project["changes"] == [] and project["runs"] == []
    sample = project["classes"][0]["samples"][0]
    image = client.get("/api/projects/colours/image", params={"path": sample})
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert image.headers["x-content-type-options"] == "nosniff"
    assert client.post("/api/projects", json={"name": "colours", "folder": "colours"}).status_code == 409


@pytest.mark.parametrize("body, code", [
    ({"name": "x", "folder": "../"}, "outside_root"),
    ({"name": "x", "folder": "/etc"}, "outside_root"),
    ({"name": "../x", "folder": "colours"}, "invalid_name"),
    ({"name": "x", "classes": ["ok", "../up"]}, "invalid_name"),
    ({"name": "x", "folder": "colours/red"}, "no_class_folders"),
])
def test_a_project_that_would_leave_the_root_is_refused_naming_the_field(client, body, code):
    answer = client.post("/api/projects", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == code and "\n" not in error["message"]


def test_a_symlink_out_of_the_root_and_a_path_outside_the_data_are_refused(client, root, tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "a").mkdir(parents=True)
    (outside / "b").mkdir()
    (root / "link").symlink_to(outside)
    assert client.post("/api/projects", json={"name": "x", "folder": "link"}).json()["error"]["code"] == "outside_root"
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    (root.parent / "secret.png").write_bytes(b"x")
    (root / "colours" / "red" / "escape.png").symlink_to(root.parent / "secret.png")
    for path in ("../projects/colours/project.json", "/etc/passwd", "red/escape.png", "red/../../x.png"):
        answer = client.get("/api/projects/colours/image", params={"path": path})
        assert answer.status_code in (400, 404) and "error" in answer.json(), path


def test_uploads_save_images_and_refuse_what_is_not_one(client, root, monkeypatch):
    assert client.post("/api/projects", json={"name": "mine", "classes": ["ants", "bees"]}).status_code == 200
    url = "/api/projects/mine/classes/ants/images"
    saved = client.post(url, files=[("files", ("a.png", png(), "image/png")), ("files", ("a.png", png(), "image/png"))])
    assert saved.status_code == 200, saved.text
    assert saved.json()["saved"] == ["ants/a.png", "ants/a-2.png"]
    assert (root / "projects" / "mine" / "data" / "ants" / "a-2.png").is_file()

    for name, data, code in [("notes.txt", b"hello", "not_an_image"), ("fake.png", b"not a png at all", "not_an_image"),
                             ("../evil.png", png(), "invalid_name"), ("empty.png", b"", "empty_file")]:
        answer = client.post(url, files=[("files", (name, data, "image/png"))])
        assert answer.status_code == 400, name
        assert answer.json()["error"]["code"] == code, answer.json()
        assert name in answer.json()["error"]["message"]
    assert not (root / "projects" / "mine" / "evil.png").exists()

    mixed = client.post(url, files=[("files", ("b.png", png(), "image/png")), ("files", ("c.txt", b"x", "text/plain"))])
    assert mixed.json()["saved"] == ["ants/b.png"] and mixed.json()["refused"][0]["file"] == "c.txt"

    monkeypatch.setattr(projects_module, "MAX_IMAGE_MB", 0.0001)
    too_large = client.post(url, files=[("files", ("big.png", png((64, 64)), "image/png"))])
    assert too_large.status_code == 400 and too_large.json()["error"]["code"] == "upload_too_large"
    assert client.post("/api/projects/mine/classes/wasps/images", files=[("files", ("a.png", png(), "image/png"))]
                       ).status_code == 404
    assert client.post("/api/projects/mine/classes", json={"name": "wasps"}).status_code == 200
    counts = {c["name"]: c["count"] for c in client.get("/api/projects/mine").json()["classes"]}
    assert counts == {"ants": 3, "bees": 0, "wasps": 0}


def test_an_upload_over_the_request_limit_is_refused_as_it_arrives_declared_or_chunked(root, monkeypatch):
    """The body is counted as it comes: a chunked upload (no Content-Length) is refused too, not saved."""
    monkeypatch.setattr(server_module, "MAX_REQUEST_MB", 0.01)  # 10 KiB
    with app_client(root) as client:
        client.post("/api/projects", json={"name": "mine", "classes": ["ants"]})
        url = "/api/projects/mine/classes/ants/images"
        declared = client.post(url, files=[("files", ("big.png", os.urandom(20_000), "image/png"))])
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "upload_too_large"

        def chunks():
            yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(100):
                yield os.urandom(1000)
        chunked = client.post(url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "upload_too_large"
        assert "0.01 MB" in chunked.json()["error"]["message"]
        assert client.post(url, files=[("files", ("a.png", png(), "image/png"))]).json()["saved"] == ["ants/a.png"]
    assert sorted(f.name for f in (root / "projects" / "mine" / "data" / "ants").iterdir()) == ["a.png"]


def test_an_upload_whose_decoder_crashes_is_refused_and_the_app_goes_on(client, root, monkeypatch):
    """Uploads decode in a forked child: a decoder that dies there refuses its file, and the next is saved."""
    client.post("/api/projects", json={"name": "mine", "classes": ["ants"]})
    real = projects_module.decode_array

    def crash_on_poison(data):
        if data.startswith(b"POISON"):
            os.abort()  # what a segfaulting native decoder does to the process it runs in
        return real(data)
    monkeypatch.setattr(projects_module, "decode_array", crash_on_poison)
    url = "/api/projects/mine/classes/ants/images"
    answer = client.post(url, files=[("files", ("bad.png", b"POISON" + png(), "image/png")),
                                     ("files", ("good.png", png(), "image/png"))])
    assert answer.status_code == 200, answer.text
    assert answer.json()["saved"] == ["ants/good.png"]
    refused = answer.json()["refused"][0]
    assert refused["file"] == "bad.png" and refused["error"]["code"] == "decoder_crashed"
    assert "SIGABRT" in refused["error"]["message"]


def test_a_project_whose_folder_went_shows_no_classes(client, root):
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    shutil.rmtree(root / "colours")
    assert client.get("/api/projects/colours").json()["classes"] == []


def test_uploads_into_a_folder_project_are_refused(client):
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    answer = client.post("/api/projects/colours/classes/red/images", files=[("files", ("a.png", png(), "image/png"))])
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "read_only"


def test_a_fix_is_a_logged_move_and_undo_moves_the_file_back(client, root):
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    data, project = root / "colours", root / "projects" / "colours"
    relabel = client.post("/api/projects/colours/fixes",
                          json={"kind": "relabel", "path": "red/img_01.png", "to_class": "green"}).json()
    assert not (data / "red" / "img_01.png").exists() and (data / "green" / "img_01-2.png").is_file()
    drop = client.post("/api/projects/colours/fixes", json={"kind": "drop", "path": "blue/img_02.png"}).json()
    assert (project / "removed" / "blue" / "img_02.png").is_file() and not (data / "blue" / "img_02.png").exists()
    log = [json.loads(line) for line in (project / "labels.jsonl").read_text().splitlines()]
    assert [(c["kind"], c["path"], c["undone"]) for c in log] == [("relabel", "red/img_01.png", None),
                                                                   ("drop", "blue/img_02.png", None)]
    for change in (relabel, drop):
        assert client.post(f"/api/projects/colours/fixes/{change['id']}/undo").status_code == 200
    assert (data / "red" / "img_01.png").is_file() and (data / "blue" / "img_02.png").is_file()
    assert not (data / "green" / "img_01-2.png").exists()
    assert all(c["undone"] for c in client.get("/api/projects/colours").json()["changes"])
    assert client.post(f"/api/projects/colours/fixes/{drop['id']}/undo").status_code == 404  # once only


@pytest.mark.parametrize("fix, code", [
    ({"kind": "relabel", "path": "red/img_01.png", "to_class": "purple"}, "unknown_class"),
    ({"kind": "drop", "path": "../projects/colours/project.json"}, "outside_root"),
    ({"kind": "drop", "path": "/etc/passwd"}, "outside_root"),
    ({"kind": "burn", "path": "red/img_01.png"}, "bad_request"),
])
def test_a_bad_fix_is_refused(client, fix, code):
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    answer = client.post("/api/projects/colours/fixes", json=fix)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == code


def test_the_train_knobs_are_the_clis(client):
    knobs = {k["name"]: k for k in client.get("/api/settings").json()["knobs"]}
    assert list(knobs) == ["model", "epochs", "image_size", "time_budget", "seed"]
    assert knobs["epochs"]["flag"] == "--epochs" and knobs["seed"]["default"] == 0


def test_the_plan_is_said_before_training_and_a_bad_setting_names_its_flag(client):
    client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    plan = client.post("/api/projects/colours/plan", json={"settings": {"model": "fast-cnn", "epochs": 3,
                                                                         "image_size": "16"}})
    assert plan.status_code == 200, plan.text
    assert any("from scratch, 3 epochs" in line for line in plan.json()["lines"])
    for settings, flag in [({"epochs": "many"}, "--epochs"), ({"epochs": 0}, "--epochs"),
                           ({"image_size": "big"}, "--image-size"), ({"out": "/tmp/x"}, "settings.out")]:
        answer = client.post("/api/projects/colours/plan", json={"settings": settings})
        assert answer.status_code == 400 and flag in answer.json()["error"]["message"], answer.json()


def test_a_relabel_in_split_folders_moves_within_the_split(client, root):
    for split in ("train", "val"):
        make_class_folder(root / "presplit" / split, per_class=2, classes=("a", "b"), size=(16, 16))
    client.post("/api/projects", json={"name": "pre", "folder": "presplit"})
    counts = {c["name"]: c["count"] for c in client.get("/api/projects/pre").json()["classes"]}
    assert counts == {"a": 4, "b": 4}
    change = client.post("/api/projects/pre/fixes", json={"kind": "relabel", "path": "val/a/img_00.png",
                                                          "to_class": "b"}).json()
    assert change["moved_to"] == "val/b/img_00-2.png" and (root / "presplit" / "val" / "b" / "img_00-2.png").is_file()
