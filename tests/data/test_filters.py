"""The kernels tutorial's filters: sharpen, Gaussian blur, Canny edges with real hysteresis."""

import pytest
import torch

from oculi.data.filters import FILTERS, blur, edges, gaussian_kernel, sharpen


def test_flat_images_stay_flat_and_kernels_keep_brightness():
    flat = torch.full((3, 12, 10), 77, dtype=torch.uint8)
    assert torch.equal(sharpen(flat), flat) and torch.equal(blur(flat, 2.0), flat)
    assert abs(float(gaussian_kernel(1.5).sum()) - 1) < 1e-6


def test_blur_smooths_noise_and_sharpen_strengthens_a_step():
    noise = torch.randint(0, 256, (1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert blur(noise).float().std() < 0.6 * noise.float().std()
    step = torch.zeros(1, 8, 8, dtype=torch.uint8)
    step[..., 4:] = 100
    row = sharpen(step)[0, 4].tolist()
    assert row[3] == 0 and row[4] == 200 and row[0] == 0 and row[7] == 100  # overshoot at the edge only


def test_edges_of_a_square_are_a_thin_closed_outline():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, 10:30, 10:30] = 255
    out = edges(image)[0] > 0
    assert out.shape == (40, 40) and out.any()
    assert not out[15:25, 15:25].any() and not out[:5].any() and not out[35:].any()  # inside, far outside
    assert out[20, 7:13].sum() <= 2 and out[7:13, 20].sum() <= 2  # one or two pixels thick
    assert out[8:32, 8:12].any(1)[2:-2].all()  # the left side is unbroken


def test_hysteresis_keeps_weak_edges_joined_to_strong_ones_and_drops_lone_weak_ones():
    image = torch.zeros(1, 60, 60, dtype=torch.uint8)
    # One vertical edge at column 30, rows 5-44, strong (200) at the top fading to weak (60) at the bottom.
    contrast = torch.cat([torch.full((20,), 200.0), torch.linspace(200, 60, 10), torch.full((10,), 60.0)])
    image[0, 5:45, 30:] = contrast.round().to(torch.uint8)[:, None]
    image[:, 50:58, 8:20] = 60  # a weak square on its own
    rows_with_edge = lambda out: [r for r in range(60) if out[r, 28:32].any()]  # noqa: E731
    joined = edges(image, low=60, high=150)[0] > 0
    assert set(range(8, 43)) <= set(rows_with_edge(joined))  # the weak bottom is kept: joined to the top
    assert not joined[47:].any()  # the lone weak square is dropped
    strong_only = edges(image, low=150, high=150)[0] > 0
    assert max(rows_with_edge(strong_only)) < 36


def test_every_filter_keeps_the_size():
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    for name, apply in FILTERS.items():
        out = apply(image)
        assert out.dtype == torch.uint8 and out.shape[-2:] == (17, 23), name


def test_the_filters_command_draws_them_and_rejects_bad_thresholds(tmp_path, capsys):
    from PIL import Image

    from oculi.cli import main
    picture = tmp_path / "square.png"
    pixels = torch.zeros(48, 64, 3, dtype=torch.uint8)
    pixels[12:36, 16:48] = 220
    Image.fromarray(pixels.numpy()).save(picture)
    out = tmp_path / "filters.png"
    assert main(["filters", str(picture), "--out", str(out)]) == 0 and Image.open(out).size[0] > 1000
    assert main(["filters", str(picture), "--low", "200", "--high", "100"]) == 2
    assert "--low" in capsys.readouterr().err


def test_a_filter_named_in_training_is_applied_again_in_prediction(tmp_path, colour_folder):
    import json

    import oculi
    from oculi.config import FILTER_NAMES
    assert set(FILTER_NAMES) == set(FILTERS)
    run = oculi.train(str(colour_folder), out=str(tmp_path / "run"), filter="edges", epochs=2, progress=False)
    meta = json.loads((run.run_dir / "model.json").read_text())
    assert meta["preprocessing"]["filter"] == "edges"
    clf = oculi.load(run.run_dir)
    prepared = clf.prepare(colour_folder / "red" / "img_00.png")
    assert set(prepared.unique().tolist()) <= {0, 255}  # an edge map, as in training
    rows = [line.split(",") for line in (run.run_dir / "test_predictions.csv").read_text().splitlines()[1:]]
    confidences = [p.confidence for p in clf.predict_files([colour_folder / r[0] for r in rows])]
    assert confidences == pytest.approx([float(r[3]) for r in rows], abs=1e-5)
