"""What "auto" resolves to: fast-cnn and its recipe for small images, scaled to the data; the user's
flags always win."""

import pytest

from oculi.config import TrainConfig
from oculi.data.sources import DataSource
from oculi.data.split import Record
from oculi.defaults import CPU_MAX_STAGES, CPU_MIN_EPOCHS, CPU_TIME_BUDGET, DataProbe, resolve, scratch_epochs
from oculi.errors import OculiError


def _source(n_train: int, classes: int = 10) -> DataSource:
    records = [Record(f"train/{i}", i % classes, "train") for i in range(n_train)]
    return DataSource("set", [str(c) for c in range(classes)], records)


SMALL = DataProbe((32, 32), False)


def test_small_images_get_fast_cnn_with_its_recipe():
    cfg = resolve(TrainConfig(data="x"), _source(45_000), SMALL)
    assert (cfg.model, cfg.optimizer, cfg.schedule, cfg.batch_size, cfg.label_smoothing) == \
        ("fast-cnn", "sgd", "onecycle", 512, 0.2)
    assert cfg.lr == pytest.approx(0.2) and cfg.epochs == 10


def test_test_time_views_follow_the_recipe_the_device_and_the_data():
    def tta(device="cpu", flips_keep_class=True, **flags):
        source = _source(45_000)
        source.flips_keep_class = flips_keep_class
        return resolve(TrainConfig(data="x", **flags), source, SMALL, device).tta
    assert (tta(), tta("cuda")) == ("flip", "flip-shift")  # 3x the views are cheap on a GPU only
    assert tta("cuda", flips_keep_class=False) == "none"  # a mirrored digit is another glyph
    assert tta("cuda", tta="flip") == "flip" and tta(model="vgg-mini") == "none"


def test_fast_cnn_translates_less_unless_the_augmentation_is_chosen():
    def translate(**flags):
        return resolve(TrainConfig(data="x", **flags), _source(45_000), SMALL).translate
    assert translate() == 0.0625  # 2 pixels at 32 px
    assert translate(translate=0.2) == 0.2 and translate(augment="light") is None  # None: the preset's
    assert translate(model="vgg-mini") is None


def test_a_small_set_gets_smaller_batches_with_the_learning_rate_scaled():
    cfg = resolve(TrainConfig(data="x"), _source(1_439), SMALL)
    assert cfg.batch_size == 64 and cfg.lr == pytest.approx(0.2 * 64 / 512)
    assert 1_439 // cfg.batch_size >= 16 and cfg.epochs == 40


def test_fast_cnn_trains_a_smaller_set_for_more_epochs_but_fewer_images_in_all():
    def epochs(n_train):
        return resolve(TrainConfig(data="x"), _source(n_train), SMALL).epochs
    counts = [1_439, 9_000, 20_000, 45_000, 90_000]
    assert [epochs(n) for n in counts] == sorted((epochs(n) for n in counts), reverse=True)
    assert epochs(45_000) == 10 and epochs(90_000) == 10 and epochs(1_439) == 40  # the bounds
    assert 10 < epochs(9_000) < 40
    assert epochs(9_000) * 9_000 < epochs(45_000) * 45_000  # fewer images seen in all than CIFAR-10's


def test_scratch_epochs_scale_as_a_power_of_the_set_and_stay_in_bounds():
    assert scratch_epochs(45_000, 450_000) == 10 and scratch_epochs(4_500, 450_000) == 40  # linear: n x epochs
    assert scratch_epochs(11_250, 450_000, reference_images=45_000) == 17  # 40 x (1/4) ^ 0.6 = 17.4
    assert scratch_epochs(90_000, 900_000, reference_images=45_000) == 15  # 10 x 2 ^ 0.6 = 15.2
    assert scratch_epochs(0, 450_000, reference_images=45_000) == 40 and scratch_epochs(10**7, 450_000) == 10


def test_the_users_flags_win_over_the_recipe():
    asked = TrainConfig(data="x", optimizer="adam", schedule="cosine", label_smoothing=0.0, batch_size=100, epochs=3)
    cfg = resolve(asked, _source(45_000), SMALL)
    assert (cfg.optimizer, cfg.schedule, cfg.label_smoothing, cfg.batch_size, cfg.epochs) == ("adam", "cosine", 0.0, 100, 3)
    assert cfg.lr == pytest.approx(1e-3)  # the recipe's SGD rate does not follow another optimizer


def test_other_models_keep_the_general_defaults():
    cfg = resolve(TrainConfig(data="x", model="vgg-mini"), _source(45_000), SMALL)
    assert (cfg.optimizer, cfg.schedule, cfg.label_smoothing, cfg.batch_size) == ("adamw", "cosine", 0.0, 64)


def test_augmentation_knobs_override_the_preset():
    from oculi.plan import training_augmentation
    light = training_augmentation(TrainConfig(augment="light"))
    changed = training_augmentation(TrainConfig(augment="light", rotation=30, fill_mode="wrap", vflip=True))
    assert (changed.rotation, changed.fill_mode, changed.vflip) == (30, "wrap", True)
    assert (changed.flip, changed.translate) == (light.flip, light.translate)  # the rest stays the preset's
    assert training_augmentation(TrainConfig(augment="none")) is None
    only_vflip = training_augmentation(TrainConfig(augment="none", vflip=True))
    assert only_vflip.vflip and not only_vflip.flip and only_vflip.translate == 0
    # Mirrored digits are other digits: no flips unless asked for.
    assert not training_augmentation(TrainConfig(augment="light"), flips_keep_class=False).flip
    assert training_augmentation(TrainConfig(augment="light", flip=True), flips_keep_class=False).flip


@pytest.mark.parametrize("knob, value, flag", [("rotation", 181, "--rotation"), ("zoom", -0.1, "--zoom"),
                                               ("shift", 0.6, "--shift"), ("fill_mode", "mirror", "--fill-mode")])
def test_augmentation_knobs_out_of_range_name_the_flag(knob, value, flag):
    from oculi.errors import OculiError
    with pytest.raises(OculiError, match=flag):
        TrainConfig(**{knob: value}).validate()


def _photos_plan(n_train: int, device: str = "cpu", **flags) -> TrainConfig:
    return resolve(TrainConfig(data="x", model="efficientnet_lite0", **flags), _source(n_train, 2),
                   DataProbe((256, 256), False), device)


@pytest.mark.slow
def test_auto_on_a_cpu_fine_tunes_the_top_stages_within_a_time_budget():
    cfg = _photos_plan(200)
    assert cfg.mode == "auto" and cfg.unfreeze_stages >= 1 and cfg.time_budget == CPU_TIME_BUDGET
    assert cfg.patience == 3 and CPU_MIN_EPOCHS <= cfg.epochs <= 8  # cheap epochs, given up early
    assert cfg.lr == 1e-3 and _photos_plan(200, "cuda").lr == 3e-4 and _photos_plan(200, lr=0.01).lr == 0.01
    gpu = _photos_plan(200, "cuda")  # a GPU fine-tunes everything, without a budget
    assert (gpu.unfreeze_stages, gpu.time_budget, gpu.patience) == (None, None, 10)
    assert _photos_plan(200, mode="finetune").unfreeze_stages is None  # asked for the whole network
    assert _photos_plan(200, epochs=4).patience == 10  # epochs asked for are trained as asked


@pytest.mark.slow
def test_more_images_get_fewer_stages_and_epochs_never_fewer_than_one():
    plans = [_photos_plan(n) for n in (200, 2_000, 5_000, 20_000)]
    stages = [p.unfreeze_stages for p in plans]
    assert stages == sorted(stages, reverse=True) and stages[0] > stages[-1] == 1
    assert all(p.epochs >= 1 for p in plans) and plans[-1].epochs < plans[0].epochs
    assert _photos_plan(200, time_budget=10_000).unfreeze_stages == CPU_MAX_STAGES  # a long budget: the most


def test_activations_that_would_not_fit_in_memory_leave_the_features_head_alone():
    assert _photos_plan(100_000).mode == "features"


@pytest.mark.slow
def test_a_small_set_gets_augmented_feature_views_up_to_about_2000_vectors():
    views = {n: _photos_plan(n).feature_views for n in (100, 221, 500, 1_000, 1_999, 2_000, 50_000)}
    assert views == {100: 8, 221: 8, 500: 4, 1_000: 2, 1_999: 1, 2_000: 1, 50_000: 1}
    assert _photos_plan(221, feature_views=1).feature_views == 1  # asked for
    assert resolve(TrainConfig(data="x"), _source(221), SMALL).feature_views == 1  # from scratch: no features
    assert _photos_plan(221, "cuda", mode="finetune").feature_views == 1  # no features head


@pytest.mark.slow
def test_the_views_activations_count_against_memory_but_not_against_an_epoch():
    plain, views = _photos_plan(1_000, feature_views=1), _photos_plan(1_000)
    assert views.feature_views == 2 and (views.unfreeze_stages, views.epochs) == (plain.unfreeze_stages, plain.epochs)
    # the last stage's inputs of 69,000 images fit in 2 GiB: 35,000 do; with a second view of each, no longer
    assert _photos_plan(35_000, feature_views=1).mode == "auto"
    assert _photos_plan(35_000, feature_views=2).mode == "features"


@pytest.mark.slow
def test_unfreeze_stages_asked_for_is_kept_and_checked():
    assert _photos_plan(20_000, unfreeze_stages=3).unfreeze_stages == 3
    with pytest.raises(OculiError, match="--unfreeze-stages must be between 1 and 7 for efficientnet_lite0; got 9"):
        _photos_plan(200, unfreeze_stages=9)
    with pytest.raises(OculiError, match="--unfreeze-stages must be between 1 and 7"):  # before any decoding
        _photos_plan(200, "cuda", mode="finetune", unfreeze_stages=8)


def test_a_time_budget_without_epochs_lets_the_first_epoch_set_the_count_from_scratch_only():
    budget = resolve(TrainConfig(data="x", time_budget=120.0), _source(45_000), SMALL)
    assert budget.epochs_from_budget and budget.epochs >= 1  # the recipe's count until the first epoch ends
    counted = resolve(TrainConfig(data="x", time_budget=120.0, epochs=3), _source(45_000), SMALL)
    assert not counted.epochs_from_budget and counted.epochs == 3
    assert not resolve(TrainConfig(data="x"), _source(45_000), SMALL).epochs_from_budget
