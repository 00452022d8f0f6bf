"""The work behind ``oculi serve``, HTTP aside: uploads decoded in contained worker processes, gathered into
batches for the model by one thread, Grad-CAM on request, and a bound on the work in flight.

A request's images are admitted together or not at all (``--queue`` images at most in flight: decoding,
waiting for the model or in it); every upload is decoded before any reaches the model, so a request with
one bad file is refused whole, naming each bad file and why.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..data import unreadable
from ..data.unreadable import Unreadable
from ..errors import OculiError
from .batching import Batcher, Slots
from .explain import NO_STAGES, Explanation, cam_overlay, conv_stages, explain_prepared
from .predict import Classifier
from .telemetry import ServerMetrics
from .uploads import Prepare, UploadDecoder, prepare_upload

# uvicorn's own logger: its handler prints these lines along with the server's.
log = logging.getLogger("uvicorn.error")

RETRY_AFTER_S = 1  # what a busy or warming-up server asks a client to wait, in seconds
# The kind of an upload that could not be read (oculi.data.unreadable) -> the error's code in the answer.
# The codes are the API's (README lists them): a kind renamed in the data layer keeps its code here.
UNREADABLE_CODES = {unreadable.NOT_AN_IMAGE: "not_an_image", unreadable.UNSUPPORTED_FORMAT: "not_an_image",
                    unreadable.EMPTY_FILE: "empty_file", unreadable.TRUNCATED: "corrupt_image",
                    unreadable.TOO_LARGE: "too_many_pixels", unreadable.DECODER_CRASHED: "decoder_crashed",
                    unreadable.CANNOT_READ: "unreadable_image"}


@dataclass(frozen=True)
class ServeSettings:
    """The serving knobs of ``oculi serve`` (its flags); ``checked()`` refuses a value out of range."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 256
    max_upload_mb: float = 20.0
    max_files: int = 32
    workers: int | None = None  # processes decoding uploads; None: one per core, at most 8

    def checked(self) -> "ServeSettings":
        _in_range("--max-batch", self.max_batch, 1, 4096)
        _in_range("--max-wait-ms", self.max_wait_ms, 0, 10_000)
        _in_range("--queue", self.queue, 1, 1_000_000)
        _in_range("--max-upload-mb", self.max_upload_mb, 0.001, 10_000)
        _in_range("--max-files", self.max_files, 1, 10_000)
        if self.workers is not None:
            _in_range("--workers", self.workers, 1, 256)
        if self.queue < self.max_files:
            raise OculiError(f"--queue ({self.queue}) must be at least --max-files ({self.max_files}): "
                             f"a request of {self.max_files} images could never be taken")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def decode_workers(self) -> int:
        return self.workers or min(os.cpu_count() or 1, 8)


def _in_range(flag: str, value, low, high) -> None:
    if not low <= value <= high:  # also false for nan
        raise OculiError(f"{flag} must be from {low:g} to {high:g}, got {value}")


class ServeError(Exception):
    """A request the server refuses: the HTTP status, a stable code, a message, and for uploads that could
    not be read, one entry per file (``details``)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.retry_after = details, retry_after


@dataclass(frozen=True)
class Upload:
    name: str  # the client's file name: only ever shown back, never used as a path
    data: bytes


def unreadable_code(outcome: Unreadable) -> str:
    """The error code of an upload that could not be read, by its kind (every kind has one: a test sees to it)."""
    return UNREADABLE_CODES[outcome.kind]


class Service:
    """A loaded classifier at work: ``start()`` warms it up in the background (``ready`` is set when done),
    then ``predict`` and ``explain`` take uploads; ``stop()`` ends the workers."""

    def __init__(self, classifier: Classifier, settings: ServeSettings, prepare: Prepare = prepare_upload):
        self.classifier, self.settings = classifier, settings
        self.decoder = UploadDecoder(classifier.preprocessing, settings.decode_workers, prepare)
        self.slots = Slots(settings.queue)
        self.ready = threading.Event()
        self.failure: str | None = None  # why warming up failed
        self.metrics = ServerMetrics(settings.max_batch, lambda: self.slots.used, settings.queue,
                                     lambda: float(self.ready.is_set()), lambda: self.decoder.restarts)
        self.batcher = Batcher(self._probabilities, settings.max_batch, settings.max_wait_ms / 1000,
                               self.metrics.batch)
        self.explainable = bool(conv_stages(classifier.model))
        # Grad-CAM hooks the model's stages: no batch may run through it meanwhile.
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------ its life

    def start(self) -> None:
        threading.Thread(target=self._warm_up, name="oculi-warm-up", daemon=True).start()

    def stop(self) -> None:
        self.batcher.stop()
        self.decoder.stop()

    def _warm_up(self) -> None:
        """Fork the decoders (before the batcher's thread exists: fewer threads to fork past), run the model
        once on a full batch (the first call allocates), then take requests."""
        began = time.perf_counter()
        try:
            self.decoder.start()
            size = self.classifier.preprocessing.image_size
            blank = np.zeros((self.classifier.preprocessing.channels, *size), np.uint8)
            self._probabilities([blank] * self.settings.max_batch)
            self.batcher.start()
        except Exception as err:  # the server stays up to say so on /readyz
            self.failure = f"warm-up failed: {type(err).__name__}: {err}"
            log.exception("oculi: %s", self.failure)
            return
        self.ready.set()
        log.info("oculi: model '%s' ready (warm-up %.1f s)", self.name, time.perf_counter() - began)

    # ------------------------------------------------------------ what it answers

    @property
    def name(self) -> str:
        return self.classifier.meta["model"]["name"]

    def describe(self) -> dict:
        """The model as ``GET /v1/model`` shows it."""
        meta, s = self.classifier.meta, self.settings
        return {"name": self.name, "classes": self.classifier.classes, "head": self.classifier.head,
                "metrics": meta.get("metrics"), "preprocessing": self.classifier.preprocessing.to_dict(),
                "data": meta.get("data"), "trainable_parameters": meta.get("trainable_parameters"),
                "weights_source": meta.get("weights_source"), "oculi_version": meta.get("oculi_version"),
                "grad_cam": self.explainable,
                "limits": {"max_files": s.max_files, "max_upload_mb": s.max_upload_mb, "max_batch": s.max_batch}}

    def check_ready(self) -> None:
        """Nothing when requests can be taken; else the ServeError that says why not."""
        if self.failure is not None:
            raise ServeError(503, "not_ready", self.failure)
        if not self.ready.is_set():
            raise ServeError(503, "not_ready", "the model is warming up", retry_after=RETRY_AFTER_S)

    async def predict(self, uploads: list[Upload], top_k: int) -> list[dict]:
        """The top-k classes of each upload, in order; an upload that cannot be read gets, in its place,
        ``{"file": ..., "error": {"code": ..., "message": ...}}``. When none can be read: a ServeError (400)."""
        self.check_ready()
        with self._admitted(len(uploads)):
            outcomes = await self._decoded(uploads)
            images = [image for image in outcomes if not isinstance(image, Unreadable)]
            if not images:
                raise _unreadable(uploads, outcomes)
            rows = iter(await self.batcher.run(images))
        return [_failed_entry(upload.name, outcome) if isinstance(outcome, Unreadable)
                else self._answer(upload.name, next(rows), top_k) for upload, outcome in zip(uploads, outcomes)]

    async def explain(self, upload: Upload, class_name: str | None) -> tuple[bytes, Explanation]:
        """The Grad-CAM overlay of one upload as PNG, for ``class_name`` (default: the predicted class)."""
        self.check_ready()
        if not self.explainable:
            raise ServeError(400, "not_explainable", f"model '{self.name}' {NO_STAGES}")
        if class_name is not None and class_name not in self.classifier.classes:
            raise ServeError(400, "unknown_class", f"unknown class {class_name!r}; this model's classes are: "
                                                   + ", ".join(self.classifier.classes[:20]))
        with self._admitted(1):
            pixels = (await self._prepared([upload]))[0]
            return await asyncio.to_thread(self._explained, pixels, class_name)

    # ------------------------------------------------------------ how

    @contextmanager
    def _admitted(self, n: int) -> Iterator[None]:
        if not self.slots.take(n):
            raise ServeError(503, "queue_full", f"the server is busy ({self.slots.used} of {self.slots.capacity} "
                                                f"images in flight); retry later", retry_after=RETRY_AFTER_S)
        try:
            yield
        finally:
            self.slots.release(n)

    async def _decoded(self, uploads: list[Upload]) -> list[np.ndarray | Unreadable]:
        """Each upload decoded and prepared for the model, or the reason it could not be."""
        return await asyncio.gather(*(self.decoder.prepare(u.data) for u in uploads))

    async def _prepared(self, uploads: list[Upload]) -> list[np.ndarray]:
        """Every upload decoded and prepared for the model, or a ServeError naming each one that is not."""
        outcomes = await self._decoded(uploads)
        if any(isinstance(outcome, Unreadable) for outcome in outcomes):
            raise _unreadable(uploads, outcomes)
        return outcomes

    def _probabilities(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float | None]]:
        """One model call (on the batcher's thread) for a batch of prepared images: (probabilities, OOD
        score) of each."""
        batch = torch.stack([torch.from_numpy(image) for image in images])
        with self._model_lock:
            probs, ood = self.classifier.prepared_outputs(batch)
        return [(row, None if ood is None else float(ood[i])) for i, row in enumerate(probs)]

    def _explained(self, pixels: np.ndarray, class_name: str | None) -> tuple[bytes, Explanation]:
        with self._model_lock:
            explanation = explain_prepared(self.classifier, torch.from_numpy(pixels), class_name)
        buffer = io.BytesIO()
        Image.fromarray(cam_overlay(explanation.image, explanation.cam)).save(buffer, format="PNG")
        return buffer.getvalue(), explanation

    def _answer(self, name: str, output: tuple[np.ndarray, float | None], top_k: int) -> dict:
        row, ood_score = output
        p = self.classifier.prediction(name, row, top_k, ood_score)
        return {"file": name, "label": p.label, "probability": p.confidence, "top_label": p.top_label,
                "ood_score": p.ood_score, "top_k": p.to_dict()["top_k"],
                **({} if p.labels is None else {"labels": p.labels})}  # a multi-label model's label set


def _failed_entry(name: str, outcome: Unreadable) -> dict:
    """A file's place in a prediction list when it could not be read."""
    return {"file": name, "error": {"code": unreadable_code(outcome), "message": outcome.reason}}


def _unreadable(uploads: list[Upload], outcomes: list) -> ServeError:
    """The 400 for uploads that could not be read: the first one's code, every one in ``details``."""
    failed = [{"file": u.name, **_failed_entry(u.name, outcome)["error"]}
              for u, outcome in zip(uploads, outcomes) if isinstance(outcome, Unreadable)]
    return ServeError(400, failed[0]["code"], "; ".join(f"{f['file']}: {f['message']}" for f in failed),
                      details=failed)
