import dataclasses

import pytest

from oculi.cli import main
from oculi.config import AUGMENTATION_KNOBS, MAX_IMAGE_SIDE, SETTINGS, TrainConfig, parse_image_size
from oculi.errors import OculiError
from tests.conftest import make_class_folder


@pytest.mark.parametrize("text, size", [("224", (224, 224)), ("224x256", (224, 256)), ("32X48", (32, 48)),
                                        (64, (64, 64)), (None, None)])
def test_parse_image_size(text, size):
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["0", "axb", "1x2x3", "-4", "", "1", "100000", "32x5000"])
def test_bad_image_size_names_the_flag(text):
    with pytest.raises(OculiError, match="--image-size"):
        parse_image_size(text)


@pytest.mark.parametrize("change, flag", [
    ({"optimizer": "lbfgs"}, "--optimizer"), ({"epochs": 0}, "--epochs"), ({"val_split": 1.5}, "--val-split"),
    ({"val_split": 0.5, "test_split": 0.5}, "--val-split"), ({"lr": -1.0}, "--lr"), ({"resize": "fit"}, "--resize"),
    ({"label_smoothing": 1.0}, "--label-smoothing"), ({"batch_size": 0}, "--batch-size"),
    ({"channels": 2}, "--channels"), ({"top_k": 0}, "--top-k"), ({"patience": 0}, "--patience"),
    ({"sampler": "random"}, "--sampler"), ({"head": "tanh"}, "--head"),
])
def test_out_of_range_options_name_the_flag(change, flag):
    with pytest.raises(OculiError, match=flag):
        TrainConfig(**change).validate()


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(data="x", image_size=(24, 32), epochs=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(OculiError, match="unknown setting"):
        TrainConfig.from_dict({"data": "x", "nonsense": 1})


def test_image_size_is_bounded_on_both_sides():
    assert parse_image_size(f"2x{MAX_IMAGE_SIDE}") == (2, MAX_IMAGE_SIDE)
    with pytest.raises(OculiError, match=f"between 2 and {MAX_IMAGE_SIDE}"):
        TrainConfig(image_size=(1, 1)).validate()  # the Python API skips parse_image_size


# Settings whose value is a free name (a path, a model, a device), not one of a fixed list.
FREE_TEXT = {"data", "data_dir", "split_manifest", "model", "weights", "device", "out", "mlflow_uri",
             "images", "path_column", "label_column", "split_column", "label_sep", "label_columns"}


@pytest.mark.parametrize("f", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_every_setting_declares_its_help_and_values(f):
    """A new field without help would be a bare flag; a number without a range or a name without its
    choices would take nan, -1, 1e30 or a typo unchecked."""
    setting = SETTINGS[f.name]
    assert setting.help.strip()
    if setting.kind in ("int", "float"):
        assert setting.range is not None or setting.choices is not None
    if setting.kind == "str":
        assert (setting.choices is not None) != (f.name in FREE_TEXT)
    setting.check(f.default)  # its default is valid


CHOICES = [s for s in SETTINGS.values() if s.choices is not None]


@pytest.mark.parametrize("setting", CHOICES, ids=[s.name for s in CHOICES])
def test_choices_are_checked_by_validate(setting):
    for value in setting.choices:
        TrainConfig(**{setting.name: value}).validate()
    with pytest.raises(OculiError, match=f"^{setting.flag} must be one of .*; got 'nonsense'$"):
        TrainConfig(**{setting.name: "nonsense"}).validate()


def test_none_is_accepted_only_where_the_type_allows_it():
    TrainConfig(epochs=None, fill_mode=None, channels=None, patience=None).validate()
    for name in ("seed", "optimizer", "val_split"):
        with pytest.raises(OculiError, match=f"^{SETTINGS[name].flag} must be"):
            TrainConfig(**{name: None}).validate()


def test_augmentation_knobs_are_the_augmentation_group():
    assert AUGMENTATION_KNOBS == tuple(s.name for s in SETTINGS.values() if s.group == "augmentation")
    assert {"rotation", "flip", "fill_mode"} <= set(AUGMENTATION_KNOBS)
    assert all(SETTINGS[name].help.startswith("Augmentation: ") for name in AUGMENTATION_KNOBS)


NUMBER_RANGES = tuple(s.range for s in SETTINGS.values() if s.range is not None)


def test_number_ranges_are_the_declared_ranges():
    assert SETTINGS["momentum"].range.flag == "momentum"  # API only: named by its field
    assert SETTINGS["val_split"].range == ("val_split", "--val-split", 0, 1, "float", "high")


@pytest.mark.parametrize("field, value", [("seed", 0), ("seed", 2**32 - 1), ("lr", 9.9), ("momentum", 0.0),
                                          ("warmup_epochs", 0.0), ("epochs", 1), ("weight_decay", 1)])
def test_range_ends_are_accepted(field, value):
    TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("change, flag", [({"seed": 2**32}, "--seed"), ({"epochs": 2.5}, "--epochs"),
                                          ({"lr": "0.1"}, "--lr"), ({"momentum": 1.0}, "momentum"),
                                          ({"lr": 0.0}, "--lr"), ({"rotation": float("nan")}, "--rotation")])
def test_wrong_kind_or_excluded_end_is_refused(change, flag):
    with pytest.raises(OculiError, match=f"^{flag} must be between"):
        TrainConfig(**change).validate()


FLAGGED = [r for r in NUMBER_RANGES if r.flag.startswith("--")]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "huge"])
@pytest.mark.parametrize("rule", FLAGGED, ids=[r.flag for r in FLAGGED])
def test_absurd_numbers_on_the_command_line_are_one_line_errors(tmp_path, capsys, rule, value):
    if value == "huge":
        value = "99999999999999999999999" if rule.kind == "int" else "1e30"
    data = make_class_folder(tmp_path / "colours", per_class=2)
    code = main(["train", str(data), rule.flag, value, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and rule.flag in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_python_api_parses_text_values_as_the_cli_does():
    # issue 25: oculi.train(time_budget="2m") failed; only image_size was parsed
    from oculi.api import _parsed
    assert _parsed({"time_budget": "2m", "image_size": 160, "epochs": 3}) == {
        "time_budget": 120.0, "image_size": (160, 160), "epochs": 3}
    assert _parsed({"image_size": "96x64", "time_budget": 90.0}) == {"image_size": (96, 64), "time_budget": 90.0}


@pytest.mark.parametrize("name", [name for name, s in SETTINGS.items() if s.parse])
def test_every_parse_takes_a_parsed_value_as_it_is(name):
    """The Python API applies every setting's ``parse`` to what it is given, text or the value itself."""
    from oculi.api import _parsed
    parse = SETTINGS[name].parse
    assert parse(None) is None and parse(SETTINGS[name].default) == SETTINGS[name].default
    value = {"image_size": (48, 64), "time_budget": 120.0}[name]  # a new parse= setting: add its value here
    assert parse(value) == value and _parsed({name: value}) == {name: value}


@pytest.mark.parametrize("image_size, size", [("16", (16, 16)), ("16x12", (16, 12)), (16, (16, 16)),
                                              ((16, 12), (16, 12))])
def test_oculi_train_takes_the_flags_text_for_every_parsed_setting(tmp_path, image_size, size):
    import oculi
    data = make_class_folder(tmp_path / "colours", per_class=6)
    run = oculi.train(str(data), model="mlp", epochs=1, time_budget="2m", image_size=image_size,
                      out=str(tmp_path / "run"), progress=False, report=False, cache=False)
    assert run.config.time_budget == 120.0 and run.config.image_size == size
    assert oculi.load(run.run_dir).preprocessing.image_size == size
