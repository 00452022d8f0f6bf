"""The app's jobs: real `oculi train`, `export` and `card` processes (`check`'s: tests/app/test_page.py), their
results through the API, a twin refused, live epochs over Server-Sent Events, and a run interrupted by the
app's stop that a new app (on the same root) shows interrupted and resumes, then cancels."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from oculi.rundir import RunDir
from tests.app.conftest import TINY_TRAIN, app_client, make_root, wait_job, wait_until

pytestmark = pytest.mark.slow  # real training processes


def sse_events(client, job_id: int, last_event: int | None = None) -> list[tuple[str, dict]]:
    """Every (event, data) of a job's stream, to its end (``last_event``: as a reconnecting page asks)."""
    events, kind = [], None
    headers = {} if last_event is None else {"Last-Event-ID": str(last_event)}
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
    return events


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A root whose project `colours` was trained by the app once (the stream of that job kept): (client, events)."""
    root = make_root(tmp_path_factory.mktemp("app") / "root")
    with app_client(root) as client:
        client.post("/api/projects", json={"name": "colours", "folder": "colours"})
        settings = {**TINY_TRAIN, "report": False}  # the page's test reads a report
        job = client.post("/api/projects/colours/train", json={"settings": settings})
        assert job.status_code == 200, job.text
        twin = client.post("/api/projects/colours/train", json={"settings": settings})
        events = sse_events(client, job.json()["id"])
        yield client, job.json(), twin, events


def test_a_training_job_streams_its_epochs_and_ends_done(trained):
    client, job, twin, events = trained
    assert twin.status_code == 409 and twin.json()["error"]["code"] == "job_exists"
    assert "already" in twin.json()["error"]["message"]
    kinds = [kind for kind, _ in events]
    assert "plan" in kinds and kinds.count("epoch") == 1
    assert events[-1][0] == "job" and events[-1][1]["state"] == "done", client.get(f"/api/jobs/{job['id']}").json()
    assert job["args"][:2] == ["train", str(RunDir(client.app.state.projects.root / "colours").path)]


def test_a_reconnecting_stream_gets_only_the_epochs_it_lacks(trained):
    client, job = trained[:2]
    assert [kind for kind, _ in sse_events(client, job["id"], last_event=0)] == ["plan", "epoch", "job"]
    assert [kind for kind, _ in sse_events(client, job["id"], last_event=1)] == ["plan", "job"]


def test_the_finished_run_shows_its_figures_predictions_and_report(trained):
    client = trained[0]
    run = client.get("/api/projects/colours/runs/run-1").json()
    assert run["finished"] and run["test"]["n"] == 3 and len(run["rows"]) == 1
    assert {p["path"] for p in run["predictions"]} and run["test"]["confusion_matrix"]
    assert client.get("/api/projects/colours/runs/run-1/files/report").json()["error"]["code"] == "not_found"
    bundle = zipfile.ZipFile(io.BytesIO(client.get("/api/projects/colours/runs/run-1/files/bundle").content))
    assert {"run-1/model.json", "run-1/model.safetensors"} <= set(bundle.namelist())
    assert client.get("/api/projects/colours/runs/run-9").status_code == 404
    assert client.get("/api/projects/colours/runs/..x").json()["error"]["code"] == "invalid_name"


def test_the_run_predicts_an_uploaded_image_through_serves_api(trained):
    client = trained[0]
    image = (client.app.state.projects.root / "colours" / "red" / "img_00.png").read_bytes()
    answer = client.post("/api/projects/colours/runs/run-1/serve/v1/predict?top_k=2",
                         files=[("files", ("red.png", image, "image/png"))])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"][0]["top_k"]) == 2
    refused = client.post("/api/projects/colours/runs/run-1/serve/v1/predict",
                          files=[("files", ("notes.txt", b"hello", "text/plain"))])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_an_image"


def test_export_and_card_jobs_write_their_files(trained):
    client = trained[0]
    export = client.post("/api/projects/colours/runs/run-1/export").json()
    assert client.post("/api/projects/colours/runs/run-1/export").status_code == 409  # the same job twice
    assert wait_job(client, export["id"])["state"] == "done", client.get(f"/api/jobs/{export['id']}").json()["log"]
    card = client.post("/api/projects/colours/runs/run-1/card").json()
    assert wait_job(client, card["id"])["state"] == "done"
    for what in ("onnx", "onnx_json", "card"):
        assert client.get(f"/api/projects/colours/runs/run-1/files/{what}").status_code == 200, what
    assert "parity" in client.get("/api/projects/colours/runs/run-1/files/onnx_json").json()


def test_a_run_the_app_stopped_is_interrupted_then_resumed_by_a_new_app_and_cancelled(tmp_path):
    root = make_root(tmp_path / "root")
    long = {**TINY_TRAIN, "epochs": 5000, "patience": 10_000, "report": False}  # never done before it is stopped
    with app_client(root) as client:
        client.post("/api/projects", json={"name": "colours", "folder": "colours"})
        job = client.post("/api/projects/colours/train", json={"settings": long}).json()
        run = RunDir(root / "projects" / "colours" / "runs" / "run-1")
        wait_until(lambda: run.checkpoint.is_file() and run.metrics_log.is_file())
        busy = client.post("/api/projects/colours/fixes", json={"kind": "drop", "path": "red/img_00.png"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "data_in_use"  # training reads it
    # The app stopped: its job is interrupted, and the run can go on from its checkpoint.
    with app_client(root) as client:
        stopped = client.get(f"/api/jobs/{job['id']}").json()
        assert stopped["state"] == "interrupted" and stopped["resumable"] and not run.model_json.is_file()
        before = len(run.read_metrics_log())
        resumed = client.post(f"/api/jobs/{job['id']}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["args"] == ["train", "--resume", str(run.path)]
        assert client.post(f"/api/jobs/{job['id']}/resume").status_code == 409  # already resuming
        wait_until(lambda: len(run.read_metrics_log()) > before)
        cancelled = client.post(f"/api/jobs/{resumed.json()['id']}/cancel")
        assert cancelled.status_code == 200
        assert wait_job(client, resumed.json()["id"])["state"] == "cancelled"
        assert client.post(f"/api/jobs/{resumed.json()['id']}/cancel").status_code == 409
        assert client.get(f"/api/jobs/{resumed.json()['id']}").json()["resumable"]  # cancelled: it can go on


def test_a_job_recorded_running_by_an_app_that_died_is_interrupted_at_start(root):
    with app_client(root) as client:
        client.post("/api/projects", json={"name": "colours", "folder": "colours"})
    jobs_file = root / ".oculi-app" / "jobs.json"
    jobs_file.write_text(json.dumps({"jobs": [
        {"id": 7, "kind": "check", "project": "colours", "key": "check:colours:", "args": ["check", "x"], "run": None,
         "state": "running", "pid": 2**22 + 1, "created": 0, "started": 0, "ended": None, "returncode": None,
         "message": None}]}))
    with app_client(root) as client:
        job = client.get("/api/jobs/7").json()
        assert job["state"] == "interrupted" and "stopped" in job["message"]
        assert client.post("/api/jobs/7/resume").json()["error"]["code"] == "not_resumable"
        assert client.get("/api/jobs/8").json()["error"]["code"] == "not_found"
