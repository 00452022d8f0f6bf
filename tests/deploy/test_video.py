"""`oculi predict RUN clip.mp4`: the sampled frames of a video, its labelled copy, and videos that go wrong."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oculi.cli import main
from oculi.data.children import can_fork
from oculi.deploy import video
from oculi.deploy.video import Sampling, own_converter, parse_every, predict_video, video_file
from oculi.errors import OculiError
from tests.conftest import make_class_folder

av = pytest.importorskip("av", reason="the video extra: pip install 'oculi[video]'")

FPS, SECONDS, SIZE = 10, 3, (64, 48)  # (width, height)
FRAMES = FPS * SECONDS


@pytest.fixture(scope="module")
def run_dir(tiny_data, tiny_run):
    """The session's tiny mlp run on red, green and blue images (tests/test_cli.py's too): read only."""
    return tiny_run(tiny_data(per_class=6), model="mlp", epochs=1).run_dir


def frame_pixels(index: int) -> np.ndarray:
    """Frame ``index`` of the test videos: noise like the training images, one colour per second."""
    pixels = np.random.default_rng(index).integers(0, 80, size=(SIZE[1], SIZE[0], 3))
    pixels[..., (index // FPS) % 3] += 150
    return pixels.astype(np.uint8)


def make_video(path: Path, options: dict | None = None) -> Path:
    """A 3 s, 10 fps H.264 video of ``frame_pixels``."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        to_yuv = own_converter(av)  # not PyAV's per-thread one: it would outlive this test (see own_converter)
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i), format="rgb24")
            container.mux(stream.encode(to_yuv.reformat(frame, format="yuv420p")))
        container.mux(stream.encode())
    return path


def decoded(path: Path) -> list[np.ndarray]:
    to_rgb = own_converter(av)
    with av.open(str(path)) as container:
        return [to_rgb.reformat(frame, format="rgb24").to_ndarray() for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("every, frames", [("0.5s", range(0, FRAMES, 5)), ("1", range(0, FRAMES, 10)),
                                           ("10f", range(0, FRAMES, 10)), ("7f", range(0, FRAMES, 7))])
def test_every_samples_frames_by_time_or_count(run_dir, clip, capsys, every, frames):
    code, out, err = run_cli(capsys, "predict", run_dir, clip, "--every", every, "--csv", "--top-k", "2")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["frame"]) for r in rows] == list(frames)
    assert [float(r["time"]) for r in rows] == pytest.approx([i / FPS for i in frames])
    assert {r["path"] for r in rows} == {str(clip)}
    assert all(r["label"] in ("red", "green", "blue") and len(r["top_k"].split(";")) == 2 for r in rows)
    assert err.strip() == f"{clip}: {len(frames)} of {FRAMES} frames predicted ({parse_every(every).describe()})"


def test_the_table_and_json_have_a_row_per_sampled_frame(run_dir, clip, capsys):
    code, out, _ = run_cli(capsys, "predict", run_dir, clip, "--json")  # the default: every second
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["frame"], r["time"]) for r in rows] == [(0, 0.0), (10, 1.0), (20, 2.0)]
    code, out, _ = run_cli(capsys, "predict", run_dir, clip, "--every", "1s")
    assert code == 0 and "frame" in out and len([line for line in out.splitlines() if "clip.mp4" in line]) == 3


def test_a_frame_is_predicted_as_the_same_frame_saved_as_a_png(run_dir, clip, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "predict", run_dir, clip, "--every", "1f", "--json", "--top-k", "3")
    frames = {row["frame"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and len(frames) == FRAMES
    pixels = decoded(clip)
    for index in (0, 13, 27):
        png = tmp_path / f"frame{index}.png"
        Image.fromarray(pixels[index]).save(png)
        code, out, _ = run_cli(capsys, "predict", run_dir, png, "--json", "--top-k", "3")
        as_file = json.loads(out)
        assert code == 0 and frames[index]["label"] == as_file["label"]
        # The file is read by the torch-free path (ONNX Runtime on numpy), the frame by the Classifier's ONNX
        # runner on tensors: the same graph on the same pixels, a float32 rounding apart.
        assert [p["probability"] for p in frames[index]["top_k"]] == \
            pytest.approx([p["probability"] for p in as_file["top_k"]], abs=1e-5)


def test_a_video_the_caller_decoded_first_is_predicted_in_its_child(run_dir, clip):
    """The decoder child is a fork of the caller: a caller that decoded frames with PyAV's own per-thread
    converter first (whose swscale threads a fork does not copy) must not hang the child's first frame (it did
    with PyAV 18.1.1). In a process of its own, so that this one never holds such a converter."""
    script = ("import sys, av\n"
              "from oculi.cli import main\n"
              "with av.open(sys.argv[2]) as c:\n"
              "    frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]\n"
              "sys.exit(main(['predict', sys.argv[1], sys.argv[2], '--every', '1', '--csv']))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script, str(run_dir), str(clip)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0 and "timed out" not in done.stderr, done.stderr
    assert len(list(csv.DictReader(io.StringIO(done.stdout)))) == 3


def test_out_writes_a_playable_copy_with_the_label_drawn(run_dir, clip, tmp_path, capsys):
    out_file = tmp_path / "labelled.mp4"
    code, out, err = run_cli(capsys, "predict", run_dir, clip, "--every", "0.5s", "--out", out_file, "--csv")
    assert code == 0 and f"wrote {out_file}" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["labelled.mp4"]  # no temporary file left beside it
    original, labelled = decoded(clip), decoded(out_file)
    assert len(labelled) == FRAMES and labelled[0].shape == original[0].shape
    first_label = next(csv.DictReader(io.StringIO(out)))["label"]
    assert first_label in ("red", "green", "blue")
    for before, after in zip(original, labelled):
        box = np.abs(after[:8, :20].astype(int) - before[:8, :20]).mean()  # under the label's black box
        rest = np.abs(after[30:, 40:].astype(int) - before[30:, 40:]).mean()  # untouched but for the codec
        assert box > 40 and rest < 10


def test_out_must_be_a_video_file_name(run_dir, clip, capsys):
    code, _, err = run_cli(capsys, "predict", run_dir, clip, "--out", "labelled.gif")
    assert code == 2 and err.strip() == "error: --out labelled.gif: a labelled video is written as .mp4, .m4v, .mov, .mkv, .avi"


@pytest.mark.parametrize("name, options", [("cut.mkv", {}), ("cut.mp4", {"movflags": "faststart"})])
def test_a_truncated_video_gives_the_frames_before_the_cut_and_says_where_it_stopped(run_dir, tmp_path, capsys,
                                                                                      name, options):
    whole = make_video(tmp_path / f"whole{Path(name).suffix}", options)
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    code, out, err = run_cli(capsys, "predict", run_dir, cut, "--every", "2f", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and 0 < len(rows) < FRAMES // 2
    line, = err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"warning: {cut}: stopped at ") and f"{len(rows)} of " in line


def test_a_file_that_is_not_a_video_is_one_line_naming_it(run_dir, tmp_path, capsys):
    fake = tmp_path / "holiday.mp4"
    fake.write_bytes(b"this is no video, only a text that says it is one" * 20)
    code, out, err = run_cli(capsys, "predict", run_dir, fake)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {fake}: not a video, or a truncated one (Invalid data found when processing input)"


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.path.exists("/dev/video57"),
                    reason="a camera read through v4l2, at a number no machine has")
def test_a_camera_that_is_not_there_is_one_line(run_dir, capsys):
    code, out, err = run_cli(capsys, "predict", run_dir, "--source", "57")
    assert code == 2 and out == "" and err.strip() == "error: --source 57: no camera at /dev/video57"


@pytest.mark.skipif(not can_fork(), reason="containment forks: Linux only")
def test_a_decoder_crash_ends_the_video_there_not_the_command(run_dir, clip, capsys, monkeypatch):
    """The child decoding the video dies at frame 12 (as a segmentation fault in FFmpeg would kill it)."""
    parent, picker = os.getpid(), Sampling.picker

    def crashing_picker(self):
        take = picker(self)

        def take_or_crash(index, time):
            if index == 12:
                assert os.getpid() != parent, "decoded in the command's own process"
                os.abort()
            return take(index, time)
        return take_or_crash

    monkeypatch.setattr(Sampling, "picker", crashing_picker)
    code, out, err = run_cli(capsys, "predict", run_dir, clip, "--every", "5f", "--csv")
    assert code == 0 and [int(r["frame"]) for r in csv.DictReader(io.StringIO(out))] == [0, 5, 10]
    assert err.strip() == (f"warning: {clip}: stopped at 1.10 s (frame 11): decoder crashed (SIGABRT); "
                           "3 of 12 frames predicted (every 5th frame)")


def test_an_interrupted_video_keeps_what_was_predicted_and_written(run_dir, clip, tmp_path):
    from oculi.deploy.predict import Classifier
    rows = []

    def ctrl_c_at_the_second_row(row):
        rows.append(row)
        if len(rows) == 2:
            raise KeyboardInterrupt  # where Ctrl-C (or SIGTERM) lands while a row is handled

    out_file = tmp_path / "part.mkv"
    summary = predict_video(Classifier.load(run_dir, device="cpu"), video_file(clip), Sampling(frames=5),
                            ctrl_c_at_the_second_row, out=out_file, batch_size=1)
    assert summary.interrupted and summary.stopped == "interrupted" and summary.written == out_file
    assert [r.frame for r in rows] == [0, 5]
    assert 5 <= len(decoded(out_file)) < FRAMES


@pytest.mark.parametrize("text, sampling", [("0.5s", Sampling(seconds=0.5)), ("2", Sampling(seconds=2)),
                                            (" 1.5 S", Sampling(seconds=1.5)), ("10f", Sampling(frames=10)),
                                            ("1F", Sampling(frames=1))])
def test_every_reads_seconds_and_frame_counts(text, sampling):
    assert parse_every(text) == sampling


@pytest.mark.parametrize("text", ["0", "0s", "-1", "2.5f", "0f", "fast", "1m", "s", ""])
def test_a_bad_every_is_one_line_naming_the_flag(run_dir, clip, capsys, text):
    code, _, err = run_cli(capsys, "predict", run_dir, clip, "--every", text)
    assert code == 2 and err.startswith("error: --every") and len(err.strip().splitlines()) == 1


def test_a_time_step_takes_the_first_frame_at_or_after_each_multiple():
    take = Sampling(seconds=1).picker()
    times = [i / 29.97 for i in range(120)]  # NTSC: no frame falls on a whole second after 0
    assert [i for i, t in enumerate(times) if take(i, t)] == [0, 30, 60, 90]


@pytest.mark.parametrize("args, message", [
    (["{clip}", "--existing"], "--existing is for watch, not videos"),
    (["{clip}", "--nproc", "2"], "--nproc is for images, not videos"),
    (["{image}", "--every", "1s"], "--every is for videos, not images"),
    (["{image}", "--out", "x.mp4"], "--out is for videos and watch, not images"),
    (["{clip}", "{image}"], "predict: give images or videos, not both in one call"),
    (["{clip}", "--source", "0"], "predict: files and --source: give one of them"),
    ([], "predict: give image or video files, --source or --watch"),
])
def test_flags_for_another_kind_of_input_are_one_line(run_dir, clip, tmp_path, capsys, args, message):
    image = make_class_folder(tmp_path / "colours", per_class=1) / "red" / "img_00.png"
    code, _, err = run_cli(capsys, "predict", run_dir, *[a.format(clip=clip, image=image) for a in args])
    assert code == 2 and err.strip() == f"error: {message}"


def test_a_missing_pyav_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets where PyAV is not installed
    with pytest.raises(OculiError, match=r"^videos need PyAV: pip install 'oculi\[video\]'$"):
        video._av()
