"""``oculi app``'s FastAPI app: the page (``static/``), its JSON API under /api, live training over
Server-Sent Events, and ``oculi serve``'s own API for any finished run of a project.

Errors are serve's shape, ``{"error": {"code": ..., "message": ...}}``, one line naming the field or file.
The page loads its own script, style and images only (serve's ``PAGE_POLICY``); a run's report.html is
shown in a sandboxed frame with a policy of its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import zipfile
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..config import SETTINGS, TrainConfig
from ..deploy.exported import FILES as EXPORT_FILES
from ..deploy.serve import HTTP_CODES, PAGE_POLICY, STATIC as SERVE_STATIC, BodyLimit
from ..deploy.service import ServeError
from ..errors import OculiError, first_line
from ..io import exclusive_lock
from ..rundir import RunDir
from .jobs import ENDED, STATE_FOLDER, Jobs
from .projects import Project, Projects

STATIC = Path(__file__).parent / "static"
# A run's report.html, framed by the page: its inline styles and data-URI figures, nothing else, no scripts.
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
# The knobs the Train screen shows, by the CLI's names and defaults (TrainConfig's settings).
TRAIN_KNOBS = ("model", "epochs", "image_size", "time_budget", "seed")
# Settings the app decides itself: where the data and the run are, how many processes.
APP_DECIDES = {"data", "out", "nproc", "max_restarts", "world_size", "progress"}
PARSERS = {"int": int, "float": float, "str": str}
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}
MAX_REQUEST_MB = 100  # an upload request's largest body
EVENT_POLL_S = 0.5
LOADED_RUNS = 2  # finished runs kept loaded for predictions


# ---------------------------------------------------------------- errors

def error_json(status: int, code: str, message: str, details: list | None = None) -> JSONResponse:
    body = {"code": code, "message": message, **({"details": details} if details else {})}
    return JSONResponse({"error": body}, status_code=status)


async def _serve_error(request: Request, err: ServeError) -> JSONResponse:
    return error_json(err.status, err.code, err.message, err.details)


async def _oculi_error(request: Request, err: OculiError) -> JSONResponse:
    return error_json(400, "bad_request", first_line(err, None))


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return error_json(err.status_code, HTTP_CODES.get(err.status_code, f"http_{err.status_code}"), str(err.detail))


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
    return error_json(400, "invalid_parameter", problems)


def _request_too_large() -> JSONResponse:
    return error_json(413, "upload_too_large", f"the request is larger than {MAX_REQUEST_MB} MB")


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    return error_json(500, "internal_error", "internal error (see the app's log)")


# ---------------------------------------------------------------- training settings

def knob(name: str) -> dict:
    """A setting as the Train screen shows it: its flag, help and default, as ``oculi train --help`` does."""
    s = SETTINGS[name]
    limits = s.range._asdict() if s.range else {}
    return {"name": name, "flag": s.flag, "help": s.help, "default": s.default, "kind": s.kind,
            "text": s.parse is not None,  # written as words (90s, 24x32), parsed by the setting itself
            "choices": list(s.choices) if s.choices else None, "low": limits.get("low"), "high": limits.get("high")}


def checked_settings(data: Path, given: dict) -> tuple[TrainConfig, list[str]]:
    """The training settings a client sent, as a validated TrainConfig and as ``oculi train`` flags;
    a bad one is a 400 naming its flag."""
    if not isinstance(given, dict):
        raise ServeError(400, "invalid_parameter", "settings: an object of setting names and values")
    values, flags = {}, []
    for name, value in given.items():
        s = SETTINGS.get(name)
        if s is None or not s.cli or name in APP_DECIDES:
            raise ServeError(400, "invalid_parameter", f"settings.{name}: not a setting the app takes")
        if value is None or value == "":
            continue
        if s.kind == "bool" and not s.parse:
            if not isinstance(value, bool):
                raise ServeError(400, "invalid_parameter", f"{s.flag}: true or false, got {value!r}")
            values[name] = value
            flags.append(s.flag if value else f"--no-{s.flag[2:]}")
            continue
        try:
            values[name] = s.parse(str(value)) if s.parse else PARSERS[s.kind](value)
        except (ValueError, TypeError):
            raise ServeError(400, "invalid_parameter", f"{s.flag}: not a valid {s.kind}: {value!r}") from None
        flags += [s.flag, str(value)]
    try:
        return TrainConfig(data=str(data), progress=False, **values).validate(), flags
    except OculiError as err:
        raise ServeError(400, "invalid_parameter", first_line(err, None)) from None


def plan_lines(cfg: TrainConfig) -> list[str]:
    """What ``oculi train`` will do with these settings, in the words its plan lines use, before it starts."""
    from ..data.sources import open_configured
    from ..plan import resolve_plan
    from ..route import plan_words
    from ..runtime.engines import resolve_device
    source = open_configured(cfg)
    plan = resolve_plan(cfg, source, resolve_device(cfg.device).type)
    c, (height, width) = plan.config, plan.config.image_size
    sizes = ", ".join(f"{len(source.split_records(s))} {s}" for s in ("train", "val", "test"))
    return [f"data: {len(source.classes)} classes ({', '.join(source.classes[:8])}), {sizes}",
            f"model: {c.model}, {'pretrained' if c.pretrained else 'from scratch'}, input {c.channels}x{height}x{width}"
            f" ({c.resize}), {c.head} head",
            f"train: {plan_words(c, plan.route)}",
            f"batch {c.batch_size}, {c.optimizer}, {c.schedule} schedule, augment {c.augment}, seed {c.seed}, "
            f"device {resolve_device(c.device).type}"]


# ---------------------------------------------------------------- a run's files

def run_summary(project: Project, name: str, jobs: Jobs) -> dict:
    """A run as the Results screen shows it: its epochs so far, test figures, predictions and files."""
    files = RunDir(project.run(name))
    saved = files.read_config()["config"] if files.config.is_file() else {}
    test = files.read_json(files.test_metrics) if files.test_metrics.is_file() else None
    onnx = files.path / EXPORT_FILES["onnx"]
    job = next((j for j in reversed(jobs.jobs) if j["kind"] == "train" and j["run"] == str(files.path)), None)
    return {"name": name, "finished": files.model_json.is_file(), "epochs": saved.get("epochs"),
            "model": saved.get("model"), "rows": files.read_metrics_log() if files.metrics_log.is_file() else [],
            "test": test, "predictions": files.read_csv(files.test_predictions) if files.test_predictions.is_file() else [],
            "job": job,
            "files": {"report": files.report.is_file(), "card": files.card.is_file(), "onnx": onnx.is_file(),
                      "onnx_json": onnx.with_name(onnx.name + ".json").is_file(), "curves": files.curves.is_file(),
                      "confusion": files.confusion.is_file(), "bundle": files.model_json.is_file()}}


def run_file(run: Path, what: str) -> Response:
    """One of a run's files, to show or download."""
    files = RunDir(run)
    onnx = run / EXPORT_FILES["onnx"]
    chosen = {"report": (files.report, "text/html"), "curves": (files.curves, "image/png"),
              "confusion": (files.confusion, "image/png"), "card": (files.card, "text/markdown"),
              "onnx": (onnx, "application/octet-stream"),
              "onnx_json": (onnx.with_name(onnx.name + ".json"), "application/json")}
    if what == "bundle":
        return bundle_zip(run)
    if what not in chosen:
        raise ServeError(404, "not_found", f"file {what!r}: one of {', '.join([*chosen, 'bundle'])}")
    path, media = chosen[what]
    if not path.is_file():
        raise ServeError(404, "not_found", f"run {run.name} has no {path.name}")
    headers = {"Content-Security-Policy": REPORT_POLICY} if what == "report" else {}
    attachment = what in ("card", "onnx", "onnx_json")
    return FileResponse(path, media_type=media, headers=headers,
                        filename=path.name if attachment else None)


def bundle_zip(run: Path) -> Response:
    """The files ``oculi push`` would upload (what ``oculi.load`` needs, its card, exports, figures), zipped."""
    from ..deploy.hub import files_to_push
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files_to_push(run):
            archive.write(run / name, f"{run.name}/{name}")
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{run.name}.zip"'})


# ---------------------------------------------------------------- predictions: oculi serve's app per run

class RunServers:
    """``oculi serve``'s app (its /v1/predict, /v1/explain, /v1/model, errors and limits) for the run named
    in the path, mounted at /api/projects/{project}/runs/{run}/serve; the last ``LOADED_RUNS`` stay loaded."""

    def __init__(self, projects: Projects):
        self.projects = projects
        self.loaded: OrderedDict[Path, tuple] = OrderedDict()  # run folder -> (service, app)
        self._lock = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        params = scope["path_params"]
        try:
            app = await self._app(params["project"], params["run"])
        except ServeError as err:
            return await error_json(err.status, err.code, err.message)(scope, receive, send)
        except OculiError as err:
            return await error_json(400, "bad_request", first_line(err, None))(scope, receive, send)
        await app(scope, receive, send)

    async def _app(self, project: str, run: str):
        folder = self.projects.get(project).run(run)
        if not RunDir(folder).model_json.is_file():
            raise ServeError(409, "not_finished", f"run {run} has not finished training: nothing to predict with")
        async with self._lock:
            if folder not in self.loaded:
                self.loaded[folder] = await asyncio.to_thread(_loaded_service, folder)
                while len(self.loaded) > LOADED_RUNS:
                    self.loaded.popitem(last=False)[1][0].stop()
            self.loaded.move_to_end(folder)
            return self.loaded[folder][1]

    def stop(self) -> None:
        for service, _ in self.loaded.values():
            service.stop()
        self.loaded.clear()


def _loaded_service(run: Path) -> tuple:
    """A started, warmed-up serve Service over ``run`` (on the CPU: training jobs may hold the GPU) and its app."""
    from ..deploy.predict import Classifier
    from ..deploy.serve import create_app as serve_app
    from ..deploy.service import ServeSettings, Service
    service = Service(Classifier.load(run, device="cpu"), ServeSettings(workers=1).checked())
    service.start()
    service.ready.wait(120)
    return service, serve_app(service)


# ---------------------------------------------------------------- the app

def create_app(root: str | Path) -> FastAPI:
    """The app over ``root``: its projects under ROOT/projects, its jobs in ROOT/.oculi-app."""
    root = Path(root).resolve()
    projects, jobs = Projects(root), Jobs(root)
    servers = RunServers(projects)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        jobs.start()
        try:
            yield
        finally:
            servers.stop()
            for job in await asyncio.to_thread(jobs.shutdown):
                print(f"oculi app: job {job['id']} ({job['kind']} of {job['project']}) interrupted; "
                      f"{'resume it on the page' if job['kind'] == 'train' else 'start it again on the page'}",
                      file=sys.stderr, flush=True)

    app = FastAPI(title="oculi app", lifespan=lifespan, redoc_url=None, docs_url="/api/docs",
                  openapi_url="/api/openapi.json")
    app.state.projects, app.state.jobs = projects, jobs
    app.include_router(_routes(projects, jobs))
    app.mount("/api/projects/{project}/runs/{run}/serve", servers)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/serve-static", StaticFiles(directory=SERVE_STATIC), name="serve-static")  # serve's icon
    for kind, handler in ((ServeError, _serve_error), (OculiError, _oculi_error), (HTTPException, _http_error),
                          (RequestValidationError, _invalid), (Exception, _unexpected)):
        app.add_exception_handler(kind, handler)
    # Every body is counted as it arrives (a chunked one declares no length), before a route reads it whole.
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_MB * 2**20, refusal=_request_too_large)
    return app


def _routes(projects: Projects, jobs: Jobs) -> APIRouter:
    """Every route of the page and its API, over these projects and jobs."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    # ------------------------------------------------------------ projects and their data

    @router.get("/api/settings")
    def settings() -> dict:
        return {"knobs": [knob(name) for name in TRAIN_KNOBS]}

    @router.get("/api/folders")
    def folders() -> dict:
        return {"root": str(projects.root), "folders": projects.data_folders()}

    @router.get("/api/projects")
    def project_list() -> dict:
        return {"projects": [projects.get(name).summary() for name in projects.names()]}

    @router.post("/api/projects")
    async def new_project(request: Request) -> dict:
        body = await _json(request)
        return projects.create(_field(body, "name"), body.get("folder"), body.get("classes")).summary()

    @router.get("/api/projects/{name}")
    def project(name: str) -> dict:
        p = projects.get(name)
        return {**p.summary(), "check": p.check_result(), "changes": projects.changes(p), "runs": p.run_names()}

    @router.post("/api/projects/{name}/classes")
    async def new_class(name: str, request: Request) -> dict:
        p = projects.get(name)
        projects.add_class(p, _field(await _json(request), "name"))
        return p.summary()

    @router.post("/api/projects/{name}/classes/{class_name}/images")
    async def upload(name: str, class_name: str, request: Request) -> dict:
        p = projects.get(name)
        jobs.refuse_while_reading(p.name, "an upload")
        files = await _files(request)
        return await asyncio.to_thread(projects.save_uploads, p, class_name, files)

    @router.get("/api/projects/{name}/image")
    def image(name: str, path: str) -> FileResponse:
        # Shown as the image it claims to be, never as a page: a folder of the root may hold anything.
        return FileResponse(projects.get(name).image(path), headers=IMAGE_HEADERS)

    @router.post("/api/projects/{name}/fixes")
    async def fix(name: str, request: Request) -> dict:
        body = await _json(request)
        project = projects.get(name)
        jobs.refuse_while_reading(project.name, "a fix")
        return projects.apply_fix(project, _field(body, "kind"), _field(body, "path"), body.get("to_class"))

    @router.post("/api/projects/{name}/fixes/{change_id}/undo")
    def undo(name: str, change_id: int) -> dict:
        project = projects.get(name)
        jobs.refuse_while_reading(project.name, "an undo")
        return projects.undo(project, change_id)

    # ------------------------------------------------------------ jobs

    @router.post("/api/projects/{name}/check")
    def check(name: str) -> dict:
        p = projects.get(name)
        return jobs.submit("check", p.name, ["check", str(p.data), "--labels", "--out", str(p.checks)])

    @router.post("/api/projects/{name}/plan")
    async def plan(name: str, request: Request) -> dict:
        cfg, _ = checked_settings(projects.get(name).data, (await _json(request)).get("settings", {}))
        return {"lines": await asyncio.to_thread(plan_lines, cfg)}

    @router.post("/api/projects/{name}/train")
    async def train(name: str, request: Request) -> dict:
        p = projects.get(name)
        _, flags = checked_settings(p.data, (await _json(request)).get("settings", {}))
        run = p.next_run()
        return jobs.submit("train", p.name, ["train", str(p.data), "--out", str(run), *flags], run)

    @router.get("/api/projects/{name}/runs/{run}")
    def run(name: str, run: str) -> dict:
        return run_summary(projects.get(name), run, jobs)

    @router.get("/api/projects/{name}/runs/{run}/files/{what}")
    def file(name: str, run: str, what: str) -> Response:
        return run_file(projects.get(name).run(run), what)

    @router.post("/api/projects/{name}/runs/{run}/{kind}")
    def run_job(name: str, run: str, kind: str) -> dict:
        if kind not in ("export", "card"):
            raise ServeError(404, "not_found", f"{kind!r}: a run's jobs are export and card")
        folder = _finished(projects.get(name).run(run))
        return jobs.submit(kind, name, [kind, str(folder)], folder, run)

    @router.get("/api/jobs")
    def job_list() -> dict:
        return {"jobs": [jobs.shown(j) for j in jobs.jobs]}

    @router.get("/api/jobs/{job_id}")
    def job(job_id: int) -> dict:
        return {**jobs.shown(jobs.get(job_id)), "log": jobs.log_text(job_id)}

    @router.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: int) -> dict:
        return jobs.cancel(job_id)

    @router.post("/api/jobs/{job_id}/resume")
    def resume(job_id: int) -> dict:
        return jobs.resume(job_id)

    @router.get("/api/jobs/{job_id}/events")
    def events(job_id: int, request: Request) -> StreamingResponse:
        jobs.get(job_id)
        after = request.headers.get("last-event-id", "0")
        stream = job_events(jobs, job_id, int(after) if after.isdigit() else 0)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router


async def job_events(jobs: Jobs, job_id: int, sent: int):
    """Server-Sent Events of a job: ``epoch`` for each new metrics.jsonl row (its id the row's number, so a
    reconnecting page gets only the rows it lacks), ``plan`` once the run's epochs are known, ``job`` on every
    change of state; the stream ends with the job."""
    seen_state, told_plan = None, False
    while True:
        job = jobs.get(job_id)
        files = RunDir(Path(job["run"])) if job["run"] and job["kind"] == "train" else None
        if files is not None and not told_plan and files.config.is_file():
            told_plan = True
            saved = files.read_config()
            config = saved["config"]
            yield _event("plan", {"epochs": config["epochs"], "head_epochs": config.get("head_epochs"),
                                  "route": saved.get("route")})
        rows = _rows(files)
        for number, row in enumerate(rows[sent:], sent + 1):
            yield _event("epoch", row, number)
        sent = max(sent, len(rows))
        if job["state"] != seen_state:
            seen_state = job["state"]
            yield _event("job", jobs.shown(job))
        if seen_state in ENDED:
            return
        await asyncio.sleep(EVENT_POLL_S)


def _rows(files: RunDir | None) -> list[dict]:
    if files is None or not files.metrics_log.is_file():
        return []
    try:
        return files.read_metrics_log()
    except (OSError, ValueError):  # replaced as it was read: the next poll reads the new one
        return []


def _event(kind: str, data, number: int | None = None) -> str:
    return (f"id: {number}\n" if number is not None else "") + f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _finished(run: Path) -> Path:
    if not RunDir(run).model_json.is_file():
        raise ServeError(409, "not_finished", f"run {run.name} has not finished training")
    return run


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ServeError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ServeError(400, "bad_request", "the body must be a JSON object")
    return body


def _field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ServeError(400, "invalid_parameter", f"{name}: required, a string")
    return value


async def _files(request: Request) -> list[tuple[str, bytes]]:
    """The (file name, bytes) of the form field ``files``."""
    form = await request.form()
    try:
        values = form.getlist("files")
        if not values or not all(isinstance(v, UploadFile) for v in values):
            raise ServeError(400, "no_files", "no images: send them as multipart/form-data in the field 'files'")
        return [(v.filename or "", await v.read()) for v in values]
    finally:
        await form.close()


def serve_app(root: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the app until Ctrl-C or SIGTERM; running jobs are then terminated and marked interrupted."""
    import signal

    import uvicorn

    from ..deploy.serve import bind
    root = Path(root)
    if not root.is_dir():
        raise OculiError(f"--root {root}: no such folder")
    sock = bind(host, port)  # first: a port that cannot be had leaves nothing in the root
    lock = root / STATE_FOLDER / "app.lock"
    lock.parent.mkdir(exist_ok=True)
    # One app a root: two would each start the queue's jobs and write over each other's jobs.json.
    with sock, exclusive_lock(lock, lambda holder: OculiError(f"--root {root}: another oculi app works on it "
                                                                f"({holder})")):
        print(f"oculi app: http://{host}:{sock.getsockname()[1]}/ (root {root.resolve()}; Ctrl-C stops)", flush=True)
        config = uvicorn.Config(create_app(root), log_level="warning", timeout_graceful_shutdown=5)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as serve: uvicorn stops on it
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
