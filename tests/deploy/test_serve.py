"""`oculi serve`'s API in process (FastAPI's TestClient): answers, errors with stable codes, bad uploads of
every kind, a decoder crash, batching, the bounded queue and the metrics."""

import io
import json
import os
import signal
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from oculi.cli import main
from oculi.data import unreadable
from oculi.data.contained import prepare_file
from oculi.data.unreadable import KINDS, Unreadable
from oculi.deploy.predict import Classifier
from oculi.deploy.serve import ERROR_CODES, FORM_PART_LIMIT
from oculi.deploy.service import unreadable_code
from tests.deploy.conftest import make_service, serving


def image_bytes(colour=(200, 30, 30), size=(24, 20), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def noise_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that is all header: it claims width x height pixels and holds none (a decompression bomb's
    first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def files(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


@pytest.fixture(scope="module")
def client(served_run):
    with serving(make_service(served_run[0])) as client:
        yield client


def error_of(response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


# ---------------------------------------------------------------- answers

def test_predict_gives_each_file_the_probabilities_oculi_predict_gives(client, served_run):
    run, data = served_run
    paths = [data / "red" / "img_00.png", data / "blue" / "img_03.png"]
    response = client.post("/v1/predict?top_k=2", files=files(*((p.name, p.read_bytes()) for p in paths)))
    assert response.status_code == 200
    answers = response.json()["predictions"]
    expected = Classifier.load(run, device="cpu").predict(paths, top_k=2)
    assert [a["file"] for a in answers] == ["img_00.png", "img_03.png"]
    for answer, p in zip(answers, expected):
        assert answer["label"] == p.label and answer["probability"] == pytest.approx(p.confidence, abs=1e-5)
        assert [t["label"] for t in answer["top_k"]] == [c for c, _ in p.top_k]


def test_below_the_bundles_threshold_the_answer_is_unknown_with_the_top_class_kept(served_run):
    service = make_service(served_run[0], workers=1)
    service.classifier.min_confidence = 1.0  # as a bundle's abstain threshold sets it: nothing is that sure
    with serving(service) as client:
        answer = client.post("/v1/predict", files=files(("a.png", image_bytes()))).json()["predictions"][0]
    assert answer["label"] == "unknown" and answer["top_label"] == answer["top_k"][0]["label"]
    assert answer["probability"] == answer["top_k"][0]["probability"] < 1.0
    assert isinstance(answer["ood_score"], float)


def test_top_k_is_capped_at_the_classes_and_checked(client):
    answer = client.post("/v1/predict?top_k=50", files=files(("a.png", image_bytes()))).json()["predictions"][0]
    assert len(answer["top_k"]) == 3 and sum(t["probability"] for t in answer["top_k"]) == pytest.approx(1, abs=1e-4)
    response = client.post("/v1/predict?top_k=0", files=files(("a.png", image_bytes())))
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter"
    assert "top_k" in error_of(response)["message"]


def test_model_describes_classes_metrics_and_preprocessing(client, served_run):
    meta = json.loads((served_run[0] / "model.json").read_text())
    model = client.get("/v1/model").json()
    assert model["name"] == "simple-cnn" and model["classes"] == meta["classes"]
    assert model["metrics"] == meta["metrics"] and model["preprocessing"]["image_size"] == [20, 24]
    assert model["grad_cam"] is True and model["limits"]["max_files"] == 32


def test_health_readiness_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert "<title>oculi</title>" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_explain_returns_the_grad_cam_overlay_as_png(client):
    response = client.post("/v1/explain", files=files(("a.png", image_bytes())))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.size == (24, 20) and overlay.mode == "RGB"  # the model's input, as it saw it
    assert response.headers["x-oculi-class"] in ("red", "green", "blue")
    chosen = client.post("/v1/explain?class=green", files=files(("a.png", image_bytes())))
    assert chosen.headers["x-oculi-class"] == "green"
    unknown = client.post("/v1/explain?class=purple", files=files(("a.png", image_bytes())))
    assert unknown.status_code == 400 and error_of(unknown)["code"] == "unknown_class"
    two = client.post("/v1/explain", files=files(("a.png", image_bytes()), ("b.png", image_bytes())))
    assert two.status_code == 413 and error_of(two)["code"] == "too_many_files"


def test_a_model_without_convolutions_says_it_cannot_explain(tmp_path):
    run = oculi_mlp_bundle(tmp_path)
    with serving(make_service(run, workers=1)) as client:
        assert client.get("/v1/model").json()["grad_cam"] is False
        response = client.post("/v1/explain", files=files(("a.png", image_bytes())))
        assert response.status_code == 400 and error_of(response)["code"] == "not_explainable"


def oculi_mlp_bundle(folder):
    from oculi.data.transforms import Preprocessing
    from oculi.models.spec import ModelSpec
    from oculi.runtime.bundle import save_bundle
    spec = ModelSpec("mlp", 2, 1, (8, 8), "softmax")
    save_bundle(folder, spec.build(), spec, ["a", "b"], Preprocessing((8, 8), 1))
    return folder


# ---------------------------------------------------------------- bad input: 400 or 413, never 500

@pytest.mark.parametrize("name, data, code, reason", [
    ("notes.txt", b"just some text, not pixels", "not_an_image", "not an image"),
    ("empty.png", b"", "empty_file", "empty file"),
    ("cut.png", image_bytes()[:60], "corrupt_image", "truncated or corrupt image data"),
    ("cut.jpg", noise_jpeg()[:2000], "corrupt_image", "truncated or corrupt image data"),
    ("bomb.png", png_header(100_000, 100_000), "too_many_pixels", "image too large (10,000 megapixels"),
    ("photo.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "not_an_image", "not an image"),
])
def test_an_unreadable_upload_is_a_400_with_the_reason(client, name, data, code, reason):
    response = client.post("/v1/predict", files=files((name, data)))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code and error["message"].startswith(f"{name}: {reason}")
    assert error["details"] == [{"file": name, "code": code, "message": error["message"][len(name) + 2:]}]


# Each kind of unreadable upload (oculi.data.unreadable) and its error code in the answer.
KIND_CODES = [(unreadable.NOT_AN_IMAGE, "not_an_image"), (unreadable.UNSUPPORTED_FORMAT, "not_an_image"),
              (unreadable.EMPTY_FILE, "empty_file"), (unreadable.TRUNCATED, "corrupt_image"),
              (unreadable.TOO_LARGE, "too_many_pixels"), (unreadable.DECODER_CRASHED, "decoder_crashed"),
              (unreadable.CANNOT_READ, "unreadable_image")]


def test_every_kind_of_unreadable_upload_has_its_documented_code():
    assert sorted(kind for kind, _ in KIND_CODES) == sorted(KINDS)
    documented = ERROR_CODES[400].split(", ")
    for kind, code in KIND_CODES:
        assert unreadable_code(Unreadable(kind, "any words")) == code and code in documented


MISLEADING = "not an image, say the words; the kind says otherwise"


def unreadable_as_named(data, preprocessing):
    """An upload whose bytes name a kind gives an Unreadable of that kind, with words that name another."""
    return Unreadable(data.decode(), MISLEADING)


def test_the_code_of_an_unreadable_upload_comes_from_its_kind_not_its_words(served_run):
    with serving(make_service(served_run[0], prepare=unreadable_as_named, workers=1)) as client:
        for kind, code in KIND_CODES:
            response = client.post("/v1/predict", files=files((f"{kind}.png", kind.encode())))
            assert response.status_code == 400, kind
            assert error_of(response) == {"code": code, "message": f"{kind}.png: {MISLEADING}",
                                          "details": [{"file": f"{kind}.png", "code": code, "message": MISLEADING}]}
        both = client.post("/v1/predict", files=files(("a.png", b"truncated"), ("b.png", b"too_large")))
        assert [d["code"] for d in error_of(both)["details"]] == ["corrupt_image", "too_many_pixels"]


def test_one_bad_file_gets_an_error_entry_and_the_others_are_predicted(client):
    response = client.post("/v1/predict", files=files(("good.png", image_bytes()), ("bad.png", b"nope"),
                                                      ("fine.png", image_bytes((10, 240, 90)))))
    assert response.status_code == 200
    good, bad, fine = response.json()["predictions"]
    assert bad == {"file": "bad.png", "error": {"code": "not_an_image", "message": "not an image"}}
    assert (good["file"], fine["file"]) == ("good.png", "fine.png")
    # each good file gets what it gets alone
    for entry, data in ((good, image_bytes()), (fine, image_bytes((10, 240, 90)))):
        alone = client.post("/v1/predict", files=files((entry["file"], data))).json()["predictions"][0]
        assert entry["label"] == alone["label"] and entry["probability"] == pytest.approx(alone["probability"])
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictResponse"]
    assert {"$ref": "#/components/schemas/FileError"} in schema["properties"]["predictions"]["items"]["anyOf"]


def test_a_request_with_no_readable_file_is_a_400_naming_each(client):
    response = client.post("/v1/predict", files=files(("a.png", b"nope"), ("b.png", b"")))
    assert response.status_code == 400 and error_of(response)["code"] == "not_an_image"
    assert [(d["file"], d["code"]) for d in error_of(response)["details"]] == [("a.png", "not_an_image"),
                                                                              ("b.png", "empty_file")]


@pytest.mark.parametrize("request_kwargs, code", [
    ({"data": {"files": "text, not a file"}}, "no_files"),
    ({"files": [("other", ("a.png", image_bytes(), "image/png"))]}, "no_files"),
    ({"json": {"files": []}}, "no_files"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, "no_files"),
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, "bad_request"),
])
def test_a_request_without_images_is_a_400(client, request_kwargs, code):
    response = client.post("/v1/predict", **request_kwargs)
    assert response.status_code == 400 and error_of(response)["code"] == code


def test_too_many_files_is_a_413(client):
    response = client.post("/v1/predict", files=files(*[(f"{i}.png", image_bytes()) for i in range(33)]))
    assert response.status_code == 413 and error_of(response)["code"] == "too_many_files"
    assert "33 files; at most 32" in error_of(response)["message"]
    assert FORM_PART_LIMIT > 32


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(served_run):
    with serving(make_service(served_run[0], max_upload_mb=0.01, workers=1)) as client:  # 10 KiB
        big = files(("big.png", os.urandom(20_000)))
        response = client.post("/v1/predict", files=big)
        assert response.status_code == 413 and error_of(response)["code"] == "upload_too_large"

        def chunks():  # no Content-Length: the limit is checked as the bytes arrive
            yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(100):
                yield os.urandom(1000)
        streamed = client.post("/v1/predict", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413 and error_of(streamed)["code"] == "upload_too_large"
        assert client.post("/v1/predict", files=files(("a.png", image_bytes()))).status_code == 200


def test_the_body_limit_stops_reading_a_chunked_body_once_past_it():
    """BodyLimit on its own (the app uses it too): a body that declares no length is read only until it passes
    the limit, then the refusal answers; a body under the limit reaches the app whole."""
    import asyncio

    from fastapi.responses import JSONResponse

    from oculi.deploy.serve import BodyLimit

    async def reads_all(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message.get("more_body", False)
        await JSONResponse({"read": len(body)})(scope, receive, send)

    def post(chunks: int) -> tuple[list, int]:
        given, sent = [], []

        async def receive():
            given.append(1)
            return {"type": "http.request", "body": b"x" * 1000, "more_body": len(given) < chunks}

        async def send(message):
            sent.append(message)
        limited = BodyLimit(reads_all, limit=10_000, refusal=lambda: JSONResponse({"error": "big"}, 413))
        asyncio.run(limited({"type": "http", "headers": []}, receive, send))
        return sent, len(given)

    sent, read = post(1000)
    assert sent[0]["status"] == 413 and read == 11  # the 11th kilobyte passed the limit; 989 never read
    sent, read = post(10)
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"read": 10_000} and read == 10


def test_a_client_file_name_is_only_ever_shown_back(client, tmp_path):
    name = "../../" + tmp_path.name + "-escaped.png"
    response = client.post("/v1/predict", files=files((name, image_bytes())))
    assert response.status_code == 200 and response.json()["predictions"][0]["file"] == name
    assert not list(tmp_path.parent.parent.glob("*escaped*")) and not list(tmp_path.parent.glob("*escaped*"))


def test_unknown_routes_and_methods_are_json_errors(client):
    assert error_of(client.get("/v2/nothing"))["code"] == "not_found"
    response = client.get("/v1/predict")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def crashing_prepare(data, preprocessing):
    """prepare_file, except that an upload starting with CRASH kills its process as a decoder bug would."""
    if data.startswith(b"CRASH"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return prepare_file(data, preprocessing)


def test_a_decoder_crash_costs_one_upload_not_the_server(served_run):
    with serving(make_service(served_run[0], prepare=crashing_prepare)) as client:
        response = client.post("/v1/predict", files=files(("good.png", image_bytes()), ("evil.png", b"CRASH!")))
        assert response.status_code == 200
        good, evil = response.json()["predictions"]
        assert good["file"] == "good.png" and "label" in good
        assert evil == {"file": "evil.png", "error": {"code": "decoder_crashed", "message": "decoder crashed"}}
        assert client.post("/v1/predict", files=files(("a.png", image_bytes()))).status_code == 200
        assert "oculi_decoder_restarts_total 1" in client.get("/metrics").text


def test_a_bug_is_a_500_json_error_without_details(served_run):
    service = make_service(served_run[0], workers=1)
    with serving(service, raise_server_exceptions=False) as client:
        service.classifier.prepared_outputs = lambda batch: 1 / 0
        response = client.post("/v1/predict", files=files(("a.png", image_bytes())))
        assert response.status_code == 500
        assert error_of(response) == {"code": "internal_error", "message": "internal error (see the server's log)"}


# ---------------------------------------------------------------- batching, the queue, readiness, metrics

class GatedModel:
    """The classifier's model call, held at ``gate`` (with ``entered`` set) until the test opens it."""

    def __init__(self, service):
        self.real, self.gate, self.entered = service.classifier.prepared_outputs, threading.Event(), threading.Event()
        service.classifier.prepared_outputs = self

    def __call__(self, batch):
        self.entered.set()
        self.gate.wait(10)
        return self.real(batch)


def post_in_threads(client, n: int, path="/v1/predict") -> tuple[list, list[threading.Thread]]:
    responses: list = []
    threads = [threading.Thread(target=lambda: responses.append(
        client.post(path, files=files(("a.png", image_bytes()))))) for _ in range(n)]
    for t in threads:
        t.start()
    return responses, threads


def test_concurrent_requests_share_model_calls(served_run):
    service = make_service(served_run[0], max_wait_ms=20)
    with serving(service) as client:
        gated, calls_before = GatedModel(service), service.batcher.calls
        responses, threads = post_in_threads(client, 12)
        assert gated.entered.wait(10)
        while service.slots.used < 12:  # every request is in: decoding, waiting or in the model
            threading.Event().wait(0.01)
        gated.gate.set()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in responses] == [200] * 12
        calls = service.batcher.calls - calls_before
        assert calls < 12, f"{calls} model calls for 12 requests"
        assert "oculi_images_predicted_total 12\n" in client.get("/metrics").text


def test_a_full_queue_answers_503_with_retry_after(served_run):
    service = make_service(served_run[0], queue=2, max_files=2, workers=1)
    with serving(service) as client:
        gated = GatedModel(service)
        responses, threads = post_in_threads(client, 2)
        assert gated.entered.wait(10)
        while service.slots.used < 2:
            threading.Event().wait(0.01)
        refused = client.post("/v1/predict", files=files(("a.png", image_bytes())))
        gated.gate.set()
        for t in threads:
            t.join(30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert error_of(refused)["code"] == "queue_full"
        assert [r.status_code for r in responses] == [200, 200]
        assert client.post("/v1/predict", files=files(("a.png", image_bytes()))).status_code == 200


def test_not_ready_until_warmed_up(served_run):
    service = make_service(served_run[0], workers=1)
    gate = threading.Event()
    warm_up = service._warm_up
    service._warm_up = lambda: (gate.wait(10), warm_up())
    from fastapi.testclient import TestClient
    from oculi.deploy.serve import create_app
    with TestClient(create_app(service)) as client:
        assert client.get("/healthz").status_code == 200
        early = client.get("/readyz")
        assert early.status_code == 503 and error_of(early)["code"] == "not_ready"
        assert early.headers["retry-after"] == "1"
        assert client.post("/v1/predict", files=files(("a.png", image_bytes()))).status_code == 503
        gate.set()
        assert service.ready.wait(30)
        assert client.get("/readyz").status_code == 200


def test_metrics_count_requests_errors_and_batches(client):
    client.post("/v1/predict", files=files(("x.txt", b"text")))
    client.get("/no/such/page")
    client.get("/static/style.css")
    text = client.get("/metrics").text
    assert 'oculi_http_requests_total{route="/v1/predict",status="400"}' in text
    assert 'oculi_http_requests_total{route="other",status="404"}' in text  # made-up paths share one label
    assert 'oculi_http_requests_total{route="/static",status="200"}' in text
    assert 'oculi_errors_total{code="not_an_image"}' in text
    assert 'oculi_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}' in text
    assert "oculi_batch_size_bucket" in text and "oculi_queue_capacity 256" in text and "oculi_ready 1" in text


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be from 1 to 4096, got 0"),
    (["--max-wait-ms", "nan"], "--max-wait-ms must be from 0 to 10000, got nan"),
    (["--queue", "8"], "--queue (8) must be at least --max-files (32)"),
    (["--port", "70000"], "--port must be from 0 to 65535, got 70000"),
])
def test_serve_refuses_bad_flags_in_one_line(served_run, capsys, monkeypatch, flags, message):
    monkeypatch.setattr("uvicorn.Server.run", _must_not_serve)
    assert main(["serve", str(served_run[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def _must_not_serve(*args, **kwargs):
    raise AssertionError("oculi serve started serving despite a bad flag")


def test_serve_refuses_a_port_in_use(served_run, capsys, monkeypatch):
    import socket
    monkeypatch.setattr("uvicorn.Server.run", _must_not_serve)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(served_run[0]), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
