"""fast-cnn: its whitening layer really whitens, it takes any small input, and it learns."""

import pytest
import torch
import torch.nn.functional as F

from oculi.models import create_model
from oculi.models.speed import PATCH, FastCNN


def _correlated_images(n=400, channels=3, side=16, seed=0):
    """Smooth, channel-correlated images: patches far from white."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(n, 1, side + 3, side + 3, generator=g), 4, stride=1)
    return base.repeat(1, channels, 1, 1) + 0.1 * torch.randn(n, channels, side, side, generator=g)


def test_whitening_filters_decorrelate_the_training_patches():
    images = _correlated_images()
    model = FastCNN(10, in_chans=3)
    model.init_from_data(images)
    half = model.whiten.out_channels // 2
    with torch.no_grad():
        responses = F.conv2d(images, model.whiten.weight[:half])  # one sign of each filter
    flat = responses.permute(0, 2, 3, 1).reshape(-1, half)
    covariance = torch.cov(flat.T)
    assert torch.allclose(covariance, torch.eye(half), atol=0.05)
    assert torch.equal(model.whiten.weight[half:], -model.whiten.weight[:half])
    assert not model.whiten.weight.requires_grad  # fixed: training leaves it as the data set it


@pytest.mark.parametrize("name", ["fast-cnn", "fast-cnn-wide"])
@pytest.mark.parametrize("channels, side", [(1, 8), (1, 28), (3, 32), (3, 64), (3, 24)])
def test_any_small_input_gives_one_logit_per_class(name, channels, side):
    model, weights = create_model(name, 7, channels, (side, side))
    assert weights is None
    assert model(torch.randn(2, channels, side, side)).shape == (2, 7)
    assert model.whiten.kernel_size == (PATCH, PATCH)


@pytest.mark.parametrize("name", ["fast-cnn", "fast-cnn-wide"])
def test_an_input_smaller_than_the_whitening_patch_is_refused_when_built(name):
    from oculi.errors import OculiError
    with pytest.raises(OculiError, match=f"{name} needs images of at least 2x2 pixels, got 1x9"):
        create_model(name, 3, 3, (1, 9))
    model, _ = create_model(name, 3, 3, (2, 2))
    model.init_from_data(torch.randn(4, 3, 2, 2))
    assert model(torch.randn(4, 3, 2, 2)).shape == (4, 3)


def test_the_whitening_bias_trains_in_the_first_epochs_only_and_then_gets_no_gradient():
    model = FastCNN(10, in_chans=1)
    trains = []
    for epoch in range(10):
        model.on_epoch_start(epoch, 10)
        trains.append(model.whiten.bias.requires_grad)
    assert trains == [True] * 3 + [False] * 7  # 30% of 10 epochs
    model.on_epoch_start(0, 1)
    assert model.whiten.bias.requires_grad  # a one-epoch run still trains it
    model.on_epoch_start(5, 10)
    F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert model.whiten.bias.grad is None and model.head.weight.grad is not None


def test_it_learns_a_separable_task():
    torch.manual_seed(0)
    images = torch.randn(256, 3, 16, 16)
    labels = (images[:, 0].mean((1, 2)) > 0).long()
    images[:, 0] += labels.view(-1, 1, 1).float() * 2 - 1
    model = FastCNN(2, 3)
    model.init_from_data(images)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2, momentum=0.9)
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() > 0.95


def test_flip_tta_run_predicts_as_evaluated_and_a_mirror_gets_the_same_answer(tmp_path, colour_folder):
    import json

    import numpy as np

    import oculi
    run = oculi.train(str(colour_folder), out=str(tmp_path / "run"), epochs=2, progress=False)
    meta = json.loads((run.run_dir / "model.json").read_text())
    assert run.config.model == "fast-cnn" and meta["preprocessing"]["tta"] == "flip"
    clf = oculi.load(run.run_dir)
    rows = [line.split(",") for line in (run.run_dir / "test_predictions.csv").read_text().splitlines()[1:]]
    confidences = [p.confidence for p in clf.predict_files([colour_folder / r[0] for r in rows])]
    assert confidences == pytest.approx([float(r[3]) for r in rows], abs=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    assert np.allclose(clf.predict_proba(image), clf.predict_proba(image[:, ::-1].copy()), atol=1e-5)
