"""``oculi serve RUN``: a trained model over HTTP, with FastAPI and uvicorn.

    POST /v1/predict   images (multipart form, field ``files``) -> top-k classes of each
    POST /v1/explain   one image -> its Grad-CAM overlay (PNG)
    GET  /v1/model     classes, metrics, preprocessing, limits
    GET  /healthz      the process answers;  GET /readyz: the model is loaded and warmed up
    GET  /metrics      Prometheus-style text;  GET /docs: the OpenAPI page;  GET /: the web page

Every error is JSON, ``{"error": {"code": ..., "message": ...}}``, with a stable code (``ERROR_CODES``);
the work itself (decoding, batching, the model) is ``oculi.deploy.service``.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import OculiError
from ..version import __version__
from .predict import Classifier
from .service import ServeError, ServeSettings, Service, Upload
from .telemetry import ServerMetrics

STATIC = Path(__file__).parent / "static"
# The multipart parser's own bound on parts; --max-files, far lower, is checked on what it read.
FORM_PART_LIMIT = 10_000
# The page loads its own script, style and images only: no CDN, nothing inline.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
ERROR_CODES = {
    400: "bad_request, invalid_parameter, no_files, not_an_image, empty_file, corrupt_image, too_many_pixels, "
         "decoder_crashed, unreadable_image, unknown_class, not_explainable",
    404: "not_found", 405: "method_not_allowed",
    413: "upload_too_large, too_many_files",
    500: "internal_error",
    503: "queue_full, not_ready (with Retry-After)",
}


# ---------------------------------------------------------------- the answers' shapes (for /docs)

class ClassProbability(BaseModel):
    label: str
    probability: float


class FilePrediction(BaseModel):
    file: str
    label: str = Field(description='The top class, or "unknown" when its probability is below the model\'s '
                                   'abstain threshold.')
    probability: float = Field(description="The top class's probability, calibrated (temperature scaling).")
    top_label: str = Field(description="The top class, even when the answer is unknown.")
    ood_score: float | None = Field(description="Energy score: higher = less like the training images "
                                                "(None from a model exported before exports gave it).")
    top_k: list[ClassProbability]
    labels: list[str] | None = Field(None, description="A multi-label model's answer: every class whose "
                                     "probability reaches its threshold (label: their names joined by ';'). "
                                     "Absent for a one-label model.")


class FileErrorBody(BaseModel):
    code: str
    message: str


class FileError(BaseModel):
    """A file of the request that could not be read (the others are predicted)."""
    file: str
    error: FileErrorBody


class PredictResponse(BaseModel):
    """One entry per file, in order: its prediction, or its error when it could not be read. A request
    none of whose files can be read is answered 400 instead (the code of the first, each in ``details``)."""
    predictions: list[FilePrediction | FileError]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": f"codes: {codes}"}
                   for status, codes in ERROR_CODES.items()}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


# ---------------------------------------------------------------- routes

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


@router.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=UPLOAD_BODY)
async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000, description="Classes per image.")):
    """Classify one or more images, sent as multipart/form-data in the field ``files``. Answered per file:
    a file that cannot be read gets ``{"file", "error": {"code", "message"}}`` in its place and the others
    are predicted (200); when no file can be read, the answer is 400."""
    service = _service(request)
    uploads = await _uploads(request, service.settings.max_files)
    return {"predictions": await service.predict(uploads, top_k)}


@router.post("/v1/explain", responses={200: {"content": {"image/png": {}}}, **ERROR_RESPONSES},
             response_class=Response, openapi_extra=UPLOAD_BODY)
async def explain(request: Request,
                  class_name: str | None = Query(None, alias="class", description="Default: the predicted class.")):
    """Grad-CAM of one image (field ``files``): where the evidence for the class lies, laid over the image
    as the model sees it (PNG). Headers name the class (URL-encoded), its probability and the stage."""
    service = _service(request)
    uploads = await _uploads(request, max_files=1)
    png, explanation = await service.explain(uploads[0], class_name)
    return Response(png, media_type="image/png", headers={
        "X-Oculi-Class": quote(explanation.label), "X-Oculi-Stage": quote(explanation.stage),
        "X-Oculi-Probability": f"{explanation.probs[explanation.target]:.6f}"})


@router.get("/v1/model")
def model(request: Request) -> dict:
    """The model's name, classes, test metrics, preprocessing, and this server's limits."""
    return _service(request).describe()


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (the model may still be warming up)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(request: Request) -> dict:
    """200 once the model is loaded and warmed up, 503 before (or if warming up failed)."""
    service = _service(request)
    service.check_ready()
    return {"status": "ready", "model": service.name}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Requests by route and status, latency, errors by code, batch sizes, the queue (Prometheus text)."""
    return PlainTextResponse(_service(request).metrics.text(), media_type="text/plain; version=0.0.4")


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


async def _uploads(request: Request, max_files: int) -> list[Upload]:
    """The files of the form field ``files``, read into memory (at most --max-upload-mb in all)."""
    form = await request.form(max_files=FORM_PART_LIMIT, max_fields=FORM_PART_LIMIT)
    try:
        values = form.getlist("files")
        if not values:
            raise ServeError(400, "no_files", "no images: send them as multipart/form-data in the field 'files'")
        if len(values) > max_files:
            raise ServeError(413, "too_many_files", f"{len(values)} files; at most {max_files} per request")
        if not all(isinstance(v, UploadFile) for v in values):
            raise ServeError(400, "no_files", "the field 'files' must hold files, not text")
        return [Upload(v.filename or f"file {i + 1}", await v.read()) for i, v in enumerate(values)]
    finally:
        await form.close()


# ---------------------------------------------------------------- errors

class BodyTooLarge(Exception):
    """Raised while reading a request body that goes past BodyLimit's limit (one that declared no length)."""


def error_response(metrics: ServerMetrics, status: int, code: str, message: str, details: list | None = None,
                   retry_after: int | None = None) -> JSONResponse:
    """The one shape of every error answer; counted by code in /metrics."""
    metrics.errors.inc(code)
    body = {"code": code, "message": message, **({"details": details} if details else {})}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _metrics_of(request: Request) -> ServerMetrics:
    return _service(request).metrics


async def _serve_error(request: Request, err: ServeError) -> JSONResponse:
    return error_response(_metrics_of(request), err.status, err.code, err.message, err.details, err.retry_after)


def _upload_too_large(metrics, settings: ServeSettings) -> JSONResponse:
    return error_response(metrics, 413, "upload_too_large",
                          f"the request is larger than {settings.max_upload_mb:g} MB (--max-upload-mb)")


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
    return error_response(_metrics_of(request), 400, "invalid_parameter", problems)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = HTTP_CODES.get(err.status_code, f"http_{err.status_code}")
    response = error_response(_metrics_of(request), err.status_code, code, str(err.detail))
    response.headers.update(err.headers or {})
    return response


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # A bug, never the client's doing: its traceback goes to the server's log (uvicorn prints it), not to them.
    return error_response(_metrics_of(request), 500, "internal_error", "internal error (see the server's log)")


# ---------------------------------------------------------------- middleware

class BodyLimit:
    """Refuses a request body over ``limit`` bytes with ``refusal()`` (a 413): at once when its declared length
    says so, else as soon as the bytes read pass the limit: a chunked body is never read to its end."""

    def __init__(self, app, limit: int, refusal: Callable[[], Response]):
        self.app, self.limit, self.refusal = app, limit, refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self.refusal()(scope, receive, send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:  # an answer already under way cannot become a 413
                raise
            await self.refusal()(scope, receive, send)


class Timing:
    """Counts every answer by route and status, and its latency, for /metrics."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, watched)
        finally:
            self.service.metrics.request(_route(scope), status, time.perf_counter() - began)


def _route(scope) -> str:
    """The route's template, not the raw path: a client cannot grow the metrics with made-up paths."""
    if scope.get("route") is not None:
        return scope["route"].path
    return "/static" if isinstance(scope.get("endpoint"), StaticFiles) else "other"


# ---------------------------------------------------------------- the app and the server

def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service``; its lifespan starts the service (warm-up in the background, so that
    /healthz answers at once) and stops it."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="oculi", version=__version__, lifespan=lifespan, redoc_url=None,
                  description="Image classification with a trained oculi model. Errors: "
                              "`{\"error\": {\"code\": ..., \"message\": ...}}`.")
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for kind, handler in ((ServeError, _serve_error), (HTTPException, _http_error),
                          (RequestValidationError, _invalid), (Exception, _unexpected)):
        app.add_exception_handler(kind, handler)
    app.add_middleware(BodyLimit, limit=service.settings.max_upload_bytes,
                       refusal=lambda: _upload_too_large(service.metrics, service.settings))
    app.add_middleware(Timing, service=service)  # added last, so outermost: it times everything
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); an address in use or not this machine's is a one-line error."""
    if not 0 <= port <= 65535:  # getaddrinfo would take 70000 as 70000 - 65536
        raise OculiError(f"--port must be from 0 to 65535, got {port}")
    try:
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that
        # say they are TCP; without it every answer on a kept-alive connection waited 40 ms for an ACK.
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as err:
        raise OculiError(f"cannot listen on {host}:{port} ({getattr(err, 'strerror', None) or err})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise OculiError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    return sock


def serve(run: str | Path, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          device: str = "auto", engine: str = "auto") -> None:
    """Load the bundle (a bad one is refused before anything listens), then serve until SIGINT or SIGTERM."""
    import uvicorn

    settings = settings.checked()
    from .lite import describe_engine
    classifier = Classifier.load(run, device=device, engine=engine)
    service = Service(classifier, settings)
    sock = bind(host, port)
    # Said once the port is ours (a refused port stays a one-line error), before the first request is
    # answered, as predict and evaluate say it: nothing runs on an engine the user did not see.
    print(f"engine: {describe_engine(classifier)}", file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(service), log_level="info", timeout_graceful_shutdown=10)
    # uvicorn stops gracefully on SIGINT or SIGTERM, then raises the signal again for the code around it:
    # here that is the end of a normal stop, not an interruption (exit code 0, no message).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
