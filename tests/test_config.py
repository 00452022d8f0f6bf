import pytest

from oculi.config import TrainConfig, parse_image_size
from oculi.errors import OculiError


@pytest.mark.parametrize("text, size", [("224", (224, 224)), ("224x256", (224, 256)), ("32X48", (32, 48)),
                                        (64, (64, 64)), (None, None)])
def test_parse_image_size(text, size):
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["0", "axb", "1x2x3", "-4", ""])
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
