"""Fine-tuning the top stages from cached activations (training.partial), and a run that does it.

Runs use timm's tiny ``test_resnet`` with "pretrained" weights from a local file, as test_transfer does.
"""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import oculi
from oculi.data.transforms import Augmentation
from oculi.models import create_model
from oculi.models.cut import split_backbone
from oculi.training import partial
from oculi.training.frozen import FrozenForward
from oculi.training.partial import TopOfModel, augment_maps, trainable_top


def _model_and_split(stages: int = 1):
    torch.manual_seed(0)
    model, _ = create_model("test_resnet", 3, 3, (48, 48))
    return model, split_backbone(model.backbone, stages, torch.randn(2, 3, 48, 48))


def test_the_top_trains_alone_with_pretrained_norms_and_saves_as_the_whole_model():
    model, split = _model_and_split()
    top = TopOfModel(model, split)
    trainable_top(model, split)
    assert top.state_dict().keys() == model.state_dict().keys()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("backbone.layer4", "head")) for n in trainable)
    top.train()
    norms = [m for m in split.top.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():  # the model's forward from the cut on: the whole model's output
        model.eval()
        assert torch.allclose(top(split.bottom(images)), model(images), atol=1e-5)


def test_augmented_maps_are_mirrored_and_windowed_the_same_for_the_same_draws():
    maps = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).reshape(2, 3, 7, 7)
    a = augment_maps(maps, torch.Generator().manual_seed(1))
    b = augment_maps(maps, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 3, 6, 6)  # 85% of 7 cells, rounded
    for out, original in zip(a, maps):  # each window is a window of the map or of its mirror image
        windows = [m[:, t:t + 6, s:s + 6] for m in (original, original.flip(2)) for t in (0, 1) for s in (0, 1)]
        assert any(torch.equal(out, w) for w in windows)
    tiny = torch.ones(1, 2, 1, 1)
    assert augment_maps(tiny, torch.Generator()).shape == (1, 2, 1, 1)  # a 1x1 map cannot shrink


def _train(data, out, weights_file, **options):
    defaults = dict(model="test_resnet", weights=str(weights_file), image_size=48, progress=False, seed=0,
                    report=False)
    return oculi.train(str(data), out=str(out), **{**defaults, **options})


def test_the_top_trains_on_the_plain_view_the_head_on_every_view():
    from oculi.training.loop import FeatureSet
    maps = torch.arange(3 * 4, dtype=torch.float16).view(3 * 4, 1, 1, 1)  # 3 views of 4 images, view by view
    labels = torch.tensor([0, 1, 0, 1]).repeat(3)
    top = partial.CachedTop(split=None, train=FeatureSet(maps, labels), val=FeatureSet(maps[:2], labels[:2]), views=3)
    assert top.plain_train.features.flatten().tolist() == [0, 1, 2, 3]
    assert top.plain_train.labels.tolist() == [0, 1, 0, 1]


def test_an_epoch_of_the_top_draws_each_image_from_one_of_its_views():
    from oculi.training.loop import FeatureSet
    images, views = 4, 3
    maps = torch.tensor([10.0 * v + i for v in range(views) for i in range(images)], dtype=torch.float16)
    labels = torch.tensor([0, 1, 2, 3]).repeat(views)  # each image its own label: a wrong row shows
    top = partial.CachedTop(split=None, train=FeatureSet(maps.view(-1, 1, 1, 1), labels),
                            val=FeatureSet(maps[:2].view(-1, 1, 1, 1), labels[:2]), views=views)
    data, generator, seen = top.data(Augmentation()), torch.Generator().manual_seed(0), set()
    for _ in range(10):
        for inputs, batch_labels in data.batches(torch.randperm(images, generator=generator), 2, generator,
                                                 torch.device("cpu")):
            for value, label in zip(inputs.flatten().tolist(), batch_labels.tolist()):
                view, image = divmod(round(value), 10)
                assert image == label  # the drawn row is the same image's
                seen.add(view)
    assert len(data.train) == images and seen == set(range(views))  # an epoch is the images; every view is drawn
    plain = partial.CachedTop(split=None, train=FeatureSet(maps[:images].view(-1, 1, 1, 1), labels[:images]),
                              val=top.val).data(Augmentation())
    assert plain.views is None


@pytest.mark.parametrize("augmentation, mirrors, crops", [(None, False, False), (Augmentation(flip=False), False, True),
                                                          (Augmentation(translate=0.0), True, False),
                                                          (Augmentation(), True, True)])
def test_the_top_moves_its_maps_only_as_the_plans_augmentation_moves_images(augmentation, mirrors, crops):
    # --augment none (None) and class folders whose mirror is another class (flip off) must not be mirrored
    # on the top-stages route either (issue 25: the maps were always mirrored and cropped).
    from oculi.training.loop import FeatureSet
    maps = torch.arange(64 * 4 * 4, dtype=torch.float16).view(64, 1, 4, 4)  # every cell its own value
    data = partial.CachedTop(split=None, train=FeatureSet(maps, torch.zeros(64, dtype=torch.long)),
                             val=FeatureSet(maps[:2], torch.zeros(2, dtype=torch.long))).data(augmentation)
    order, generator = torch.arange(64), torch.Generator().manual_seed(0)
    [(inputs, _)] = list(data.batches(order, 64, generator, torch.device("cpu")))
    cropped = inputs.shape[-1] < 4
    mirrored = any(bool((row[0, 0, 1] < row[0, 0, 0]).item()) for row in inputs)  # a row read right to left
    assert (mirrored, cropped) == (mirrors, crops)
    if not mirrors and not crops:
        assert torch.equal(inputs, maps.float())


@pytest.mark.slow
def test_a_top_stage_run_leaves_the_bottom_alone_and_predicts_as_evaluated(tmp_path, colours, weights_file):
    run = _train(colours, tmp_path / "run", weights_file, mode="finetune", unfreeze_stages=1, epochs=3, lr=3e-3)
    assert [r["phase"] for r in run.history] == ["finetune"] * 3
    saved = json.loads((run.run_dir / "config.json").read_text())
    assert saved["config"]["unfreeze_stages"] == 1
    clf = oculi.load(run.run_dir)
    donor = load_file(str(weights_file))
    state = clf.model.backbone.state_dict()
    assert all(torch.equal(state[k], donor[k]) for k in state if not k.startswith("layer4"))  # frozen bottom
    assert any(not torch.equal(state[k], donor[k]) for k in state if k.startswith("layer4") and "weight" in k)
    # test_metrics came from the top on cached activations; the bundle runs the whole model on the files
    rows = list(csv.reader((run.run_dir / "test_predictions.csv").open()))[1:]
    predictions = clf.predict_files([colours / r[0] for r in rows])
    assert [p.confidence for p in predictions] == pytest.approx([float(r[3]) for r in rows], abs=1e-4)


@pytest.mark.slow
def test_auto_on_a_cpu_tunes_the_top_after_the_head_and_a_second_run_reads_the_cache(tmp_path, colours,
                                                                                     weights_file, monkeypatch):
    bottoms = []  # each bottom pass that computed something

    class Counted(FrozenForward):
        def __call__(self, images):
            if not bottoms or bottoms[-1] is not self:
                bottoms.append(self)
            return super().__call__(images)

    monkeypatch.setattr(partial, "FrozenForward", Counted)
    first = _train(colours, tmp_path / "a", weights_file, head_epochs=5)
    assert len(bottoms) == 3  # train, val and test activations, each computed once (val reused at the end)
    phases = [r["phase"] for r in first.history]
    assert phases[:5] == ["features"] * 5 and set(phases[5:]) == {"finetune"}
    second = _train(colours, tmp_path / "b", weights_file, head_epochs=5)
    assert len(bottoms) == 3  # all read from the cache
    assert second.test_metrics["accuracy"] == first.test_metrics["accuracy"]
