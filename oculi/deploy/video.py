"""Predicting the frames of a video file, a webcam or a stream: ``oculi predict RUN clip.mp4 --every 0.5s``.

Frames are decoded by PyAV (FFmpeg) in a forked child process (``data.children.stream_in_child``), for the
reason image files are decoded in workers (``data.contained``): FFmpeg is native code, and a crash in it
must end the video's stream with "decoder crashed" after the frames before it, not kill the command. The
child sends only the frames that are sampled (every frame when a labelled copy is written), as RGB arrays.
Each sampled frame then goes through the classifier's own ``prepare`` (the bundle's Preprocessing), as a
decoded image file does: a frame is predicted as the same pixels saved as a PNG would be.

A video that stops decoding part way (corrupt data, a truncated file, a decoder crash) keeps the predictions
of the frames before: ``VideoSummary.stopped`` says where and why. With ``out``, every frame is written again,
the label (and confidence) of the latest sampled frame drawn at its top left, re-encoded by PyAV (H.264, or
MPEG-4 where FFmpeg has no H.264 encoder), video only, under a temporary name renamed when complete.
"""

from __future__ import annotations

import math
import re
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..console import Reporter
from ..data.children import ChildDied, stream_in_child
from ..errors import OculiError
from ..io import atomic_path
from .answers import Prediction

if TYPE_CHECKING:  # for the annotations only: `oculi predict` on images imports this module, and no torch
    from .predict import Classifier
from .stopping import sigterm_as_interrupt

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv",
                              ".flv", ".3gp", ".ogv"})
# The containers --out writes, by the file's suffix (the temporary file's own suffix is .tmp: FFmpeg is told).
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
DEFAULT_EVERY = "1s"
FILE_FRAME_TIMEOUT_S = 60.0  # a file's decoder silent this long on one frame is stuck, not slow
MAX_PENDING_FRAMES = 120  # frames held for a labelled copy while their batch waits for the model
LIVE_RATE = 30  # frames per second written for a camera or stream that does not say its rate
_TOLERANCE_S = 1e-6  # frame times are floats: a frame at 0.5 s may read 0.49999999


def _av():
    try:
        import av
    except ImportError:
        raise OculiError("videos need PyAV: pip install 'oculi[video]'") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class Sampling:
    """Which frames are predicted: one each ``seconds`` of video time, or every ``frames``-th frame."""

    seconds: float | None = None
    frames: int | None = None

    def describe(self) -> str:
        if self.frames is not None:
            return "every frame" if self.frames == 1 else f"every {self.frames}th frame"
        return f"every {self.seconds:g} s"

    def picker(self) -> Callable[[int, float], bool]:
        """``take(index, seconds from the first frame)``: whether that frame is predicted; call it on every
        frame, in order (a time step remembers when the next frame is due)."""
        if self.frames is not None:
            return lambda index, time: index % self.frames == 0
        due = 0.0

        def take(index: int, time: float) -> bool:
            nonlocal due
            if time + _TOLERANCE_S < due:
                return False
            due = (math.floor((time + _TOLERANCE_S) / self.seconds) + 1) * self.seconds  # the next multiple
            return True
        return take


def parse_every(text: str) -> Sampling:
    """``--every``: "0.5s" or "2" (seconds), "10f" (every 10th frame)."""
    found = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([sf]?)\s*", text.lower())
    if not found:
        raise OculiError(f"--every: '{text}' is neither seconds (0.5s, 2) nor a frame count (10f)")
    value, unit = float(found[1]), found[2] or "s"
    if unit == "f":
        if value < 1 or not value.is_integer():
            raise OculiError(f"--every {text}: a frame count is a whole number, at least 1")
        return Sampling(frames=int(value))
    if value <= 0:
        raise OculiError(f"--every {text}: the time between predicted frames must be more than 0 seconds")
    return Sampling(seconds=value)


@dataclass(frozen=True)
class VideoSource:
    """What to open: ``url`` in FFmpeg's ``format`` (None: found from the data). ``name`` is how rows name
    it, ``said`` how messages do; ``live``: a camera or stream, which has no length and ends on Ctrl-C."""

    name: str
    url: str
    format: str | None = None
    live: bool = False
    camera: bool = False

    @property
    def said(self) -> str:
        return f"--source {self.name}" if self.live else self.name


def video_file(path: str | Path) -> VideoSource:
    return VideoSource(str(path), str(path))


def live_source(text: str) -> VideoSource:
    """``--source``: a webcam's number (or a /dev/video device), a stream URL (rtsp://, http://...), or a file."""
    if text.isdigit() or text.startswith("/dev/video"):
        return _camera(text)
    if "://" in text:
        return VideoSource(text, text, live=True)
    if Path(text).is_file():
        return video_file(text)
    raise OculiError(f"--source {text}: not a camera number, a stream URL (rtsp://...) or a video file")


def _camera(text: str) -> VideoSource:
    """A webcam through FFmpeg's input device: v4l2 on Linux, avfoundation on macOS."""
    if sys.platform.startswith("linux"):
        device = f"/dev/video{text}" if text.isdigit() else text
        return VideoSource(text, device, "v4l2", live=True, camera=True)
    if sys.platform == "darwin" and text.isdigit():
        return VideoSource(text, f"{text}:none", "avfoundation", live=True, camera=True)  # none: no audio
    raise OculiError(f"--source {text}: webcams are read by number on Linux (v4l2) and macOS (avfoundation); "
                     "give a stream URL instead")


@dataclass(frozen=True)
class StreamInfo:
    """A video stream as its header gives it: size, frames per second (0: unknown), frame count (0: unknown)
    and length in seconds (None: unknown)."""

    width: int
    height: int
    rate: float
    frames: int
    duration: float | None


@dataclass
class Frame:
    """A decoded frame: its index, seconds from the first frame, RGB pixels (H x W x 3), and whether it is sampled."""

    index: int
    time: float
    pixels: np.ndarray
    sampled: bool


@dataclass(frozen=True)
class Decoded:
    """How many frames the child has decoded, and the last one's time: sent for each frame it does not send
    (for the progress bar, and to say how far a decoder that crashed went)."""

    frames: int
    time: float


@dataclass(frozen=True)
class End:
    """The end of a stream: frames decoded, seconds from the first frame to the last, and why it ended early
    (None: it did not)."""

    frames: int
    time: float
    stopped: str | None = None


def decoded_frames(source: VideoSource, sampling: Sampling, every_frame: bool
                   ) -> Iterator[StreamInfo | Frame | Decoded | End]:
    """The stream's StreamInfo, then its frames (the sampled ones, or all with ``every_frame``) with ``Decoded``
    counts in between, then an ``End``. Decoding errors end the stream there; errors opening it raise."""
    av = _av()
    to_rgb = own_converter(av)
    with _opened(source) as container:
        stream = _video_stream(container, source)
        stream.thread_type = "AUTO"  # FFmpeg decodes frames in parallel: a video is the slow part here
        info = _stream_info(container, stream)
        yield info
        take, count, start, time = sampling.picker(), 0, None, 0.0
        try:
            for frame in container.decode(stream):
                seconds = frame.time if frame.time is not None else count / (info.rate or LIVE_RATE)
                start = seconds if start is None else start
                time = seconds - start  # a stream may start at any time (an MPEG-TS at 1.4 s)
                sampled = take(count, time)
                if sampled or every_frame:
                    yield Frame(count, time, to_rgb.reformat(frame, format="rgb24").to_ndarray(), sampled)
                count += 1
                if not (sampled or every_frame):
                    yield Decoded(count, time)  # a few bytes: the parent always knows how far decoding went
        except av.error.FFmpegError as err:
            yield End(count, time, f"corrupt video data ({_words(err)})")
            return
        yield End(count, time, None if source.live else _ends_early(info, count, time))


@contextmanager
def _opened(source: VideoSource):
    """The container of ``source``, or an OculiError naming it: no such camera or file, not a video."""
    av = _av()
    try:
        container = av.open(source.url, format=source.format)
    except FileNotFoundError:
        raise OculiError(f"{source.said}: no camera at {source.url}" if source.camera
                         else f"{source.said}: no such file") from None
    except av.error.FFmpegError as err:  # before ValueError: FFmpeg's InvalidDataError is one too
        raise OculiError(f"{source.said}: cannot open ({_words(err)})" if source.live
                         else f"{source.said}: not a video, or a truncated one ({_words(err)})") from None
    except ValueError as err:  # this FFmpeg has no such input format (a build without v4l2)
        raise OculiError(f"{source.said}: cannot read a camera here ({err})") from None
    with container:
        yield container


def own_converter(av):
    """A frame converter of the caller's own, freed with it. Not PyAV's default, which it keeps for each thread
    with swscale worker threads that a fork does not copy: PyAV 18.1.1 hung a forked child that used the
    parent's (the first frame of a video never came) and one forked while another thread held one (Python
    frees the other threads' objects in the child, and freeing it waits for the missing threads)."""
    return av.video.reformatter.VideoReformatter()


def _video_stream(container, source: VideoSource):
    if not container.streams.video:
        raise OculiError(f"{source.said}: has no video stream")
    return container.streams.video[0]


def _stream_info(container, stream) -> StreamInfo:
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    else:  # the container's length (Matroska gives no stream's own), in FFmpeg's microseconds
        duration = container.duration / 1e6 if container.duration else None
    frames = stream.frames or (round(duration * rate) if duration and rate else 0)
    return StreamInfo(stream.codec_context.width, stream.codec_context.height, rate, frames, duration)


def _ends_early(info: StreamInfo, frames: int, last: float) -> str | None:
    """Why a stream that ended without an error ended early, if its header promised more: a file cut short
    is read to its last whole frame without complaint by some demuxers (Matroska). A second of slack: an
    audio track may outlast the video in the container's length."""
    if info.duration is None or frames == 0:
        return None
    shown = last + (1 / info.rate if info.rate else 0)  # the last frame lasts until the next would start
    if shown >= info.duration - max(1.0, 2 / (info.rate or LIVE_RATE)):
        return None
    return f"the file ends at {shown:.2f} s of the {info.duration:.2f} s its header gives (truncated?)"


def _words(err) -> str:
    """FFmpeg's message without the errno and file name PyAV adds ("Invalid data found when processing input")."""
    return getattr(err, "strerror", None) or str(err)


def contained_frames(source: VideoSource, sampling: Sampling, every_frame: bool
                     ) -> Iterator[StreamInfo | Frame | Decoded | End]:
    """``decoded_frames``, decoded in a child process: a decoder that crashes (or hangs on a file) ends the
    stream with an ``End`` that says so, after the frames it gave."""
    produce = partial(decoded_frames, source, sampling, every_frame)
    last = Decoded(0, 0.0)
    for item in stream_in_child(produce, timeout=None if source.live else FILE_FRAME_TIMEOUT_S):
        if isinstance(item, ChildDied):
            yield End(last.frames, last.time, f"decoder {item.reason} ({item.detail})")
            return
        if isinstance(item, Frame):
            last = Decoded(item.index + 1, item.time)
        elif isinstance(item, Decoded):
            last = item
        yield item


@dataclass
class FramePrediction:
    """The prediction of one sampled frame: its time (seconds from the first frame) and index."""

    time: float
    frame: int
    prediction: Prediction


@dataclass
class VideoSummary:
    """How reading a video went: frames decoded and predicted, how far, and why it stopped early (if it did)."""

    source: VideoSource
    sampling: Sampling
    frames: int = 0
    predicted: int = 0
    time: float = 0.0
    stopped: str | None = None
    interrupted: bool = False
    written: Path | None = None  # the labelled copy

    def line(self) -> str:
        """One line for the user: what was predicted, and where and why it stopped early."""
        done = f"{self.predicted} of {self.frames} frames predicted ({self.sampling.describe()})"
        if self.stopped is None:
            return f"{self.source.said}: {done}"
        where = f"{self.time:.2f} s (frame {self.frames - 1})" if self.frames else "its first frame"
        return f"{self.source.said}: stopped at {where}: {self.stopped}; {done}"


def predict_video(classifier: Classifier, source: VideoSource, sampling: Sampling,
                  on_row: Callable[[FramePrediction], None], top_k: int = 5, out: Path | None = None,
                  batch_size: int = 16, reporter: Reporter | None = None) -> VideoSummary:
    """Predict the sampled frames of ``source``, each given to ``on_row`` in order; with ``out``, write the
    labelled copy there. A progress bar over frames for a file (none for a live source, which has no end).
    Ctrl-C or SIGTERM ends the stream like its end: what was decoded is predicted and written, and the
    summary says ``interrupted``."""
    if out is not None:
        output_format(out)  # a bad --out before a frame is decoded
    summary = VideoSummary(source, sampling)
    with ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        frames = contained_frames(source, sampling, every_frame=out is not None)
        stack.callback(frames.close)  # kills the child, wherever the loop ends
        labelled = _LabelledFrames(classifier, source.name, top_k, on_row, summary)
        advance = None
        try:
            for item in frames:
                if isinstance(item, StreamInfo):
                    if out is not None:
                        labelled.write = stack.enter_context(labelled_video(out, item, source.live))
                    advance = stack.enter_context(_frame_bar(reporter, source, item))
                elif isinstance(item, End):
                    summary.frames, summary.stopped = item.frames, item.stopped
                    summary.time = item.time
                else:
                    summary.frames = item.frames if isinstance(item, Decoded) else item.index + 1
                    advance(summary.frames)
                    if isinstance(item, Frame):
                        labelled.add(item, batch_size)
                        summary.time = item.time
        except KeyboardInterrupt:
            summary.stopped, summary.interrupted = "interrupted", True
        labelled.flush()
    summary.written = out if labelled.write is not None else None  # renamed into place as the stack closed
    return summary


@contextmanager
def _frame_bar(reporter: Reporter | None, source: VideoSource, info: StreamInfo):
    """``advance_to(frames decoded)`` of a progress bar over the frames of a file (nothing for a live source)."""
    total = 0 if source.live or reporter is None else info.frames
    with (reporter or Reporter(quiet=True)).bar(f"frames of {Path(source.name).name}", total) as advance:
        shown = 0

        def advance_to(frames: int) -> None:
            nonlocal shown
            advance(frames - shown)
            shown = frames
        yield advance_to


class _LabelledFrames:
    """Frames in order, waiting for their batch: the sampled ones are predicted together, then each frame is
    written (when there is a labelled copy) with the label of the latest sampled frame at or before it."""

    def __init__(self, classifier: Classifier, name: str, top_k: int, on_row, summary: VideoSummary):
        self.classifier, self.name, self.top_k, self.on_row, self.summary = classifier, name, top_k, on_row, summary
        self.write: Callable[[np.ndarray, Prediction | None], None] | None = None
        self.pending: list[Frame] = []
        self.sampled = 0
        self.current: Prediction | None = None

    def add(self, frame: Frame, batch_size: int) -> None:
        self.pending.append(frame)
        self.sampled += frame.sampled
        # A live source answers each frame as it comes; a labelled copy bounds the frames held in memory.
        if self.sampled >= (1 if self.summary.source.live else batch_size) or len(self.pending) >= MAX_PENDING_FRAMES:
            self.flush()

    def flush(self) -> None:
        frames, self.pending, self.sampled = self.pending, [], 0
        sampled = [f for f in frames if f.sampled]
        prepared = [self.classifier.prepare(f.pixels) for f in sampled]
        predictions = iter(self.classifier.predict_prepared(prepared, [self.name] * len(sampled), self.top_k)
                           if sampled else ())
        for frame in frames:
            if frame.sampled:
                self.current = next(predictions)
                self.summary.predicted += 1
                self.on_row(FramePrediction(frame.time, frame.index, self.current))
            if self.write is not None:
                self.write(frame.pixels, self.current)


def output_format(path: Path) -> str:
    """FFmpeg's name of the container ``--out`` writes, from its suffix."""
    found = OUTPUT_FORMATS.get(path.suffix.lower())
    if found is None:
        raise OculiError(f"--out {path}: a labelled video is written as {', '.join(OUTPUT_FORMATS)}")
    return found


@contextmanager
def labelled_video(path: Path, info: StreamInfo, live: bool = False
                   ) -> Iterator[Callable[[np.ndarray, Prediction | None], None]]:
    """``write(pixels, prediction)``, which adds a frame to the video at ``path`` with the prediction's label
    drawn on it. The file appears, whole, when the block ends without an error; never half-written."""
    av = _av()
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), "w", format=output_format(path))
        try:
            stream, to_yuv = _encoder(container, info, live), own_converter(av)

            def write(pixels: np.ndarray, prediction: Prediction | None) -> None:
                image = draw_label(pixels[: stream.height, : stream.width], prediction)
                frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
                container.mux(stream.encode(to_yuv.reformat(frame, format=stream.pix_fmt)))

            yield write
            container.mux(stream.encode())  # the frames the encoder still holds
        finally:
            container.close()


def _encoder(container, info: StreamInfo, live: bool):
    """A video stream of the frames' size (cut to even sides: 4:2:0 chroma halves both) and rate."""
    av = _av()
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(info.rate).limit_denominator(1001) if info.rate else Fraction(LIVE_RATE)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = info.width // 2 * 2, info.height // 2 * 2, "yuv420p"
    if live and codec == "libx264":
        stream.options = {"tune": "zerolatency"}  # frames leave the encoder as they come, not seconds later
    return stream


def draw_label(pixels: np.ndarray, prediction: Prediction | None):
    """The frame as a PIL image, with "label 93%" in white on black at its top left (none before the first
    prediction)."""
    from PIL import Image, ImageDraw
    image = Image.fromarray(pixels)
    if prediction is None:
        return image
    pad = max(2, image.height // 100)
    font = _font(max(10, image.height // 18))
    draw = ImageDraw.Draw(image)
    text = f"{prediction.label} {prediction.confidence:.0%}"
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return image


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)
