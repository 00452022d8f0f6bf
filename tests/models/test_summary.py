"""The layer table of a model (the report's Model section)."""

from oculi.models import count_parameters, create_model
from oculi.models.summary import layer_rows


def test_layer_rows_add_up_to_the_model():
    model, _ = create_model("vgg-mini", 10, 3, (32, 32), "softmax", False)
    rows = layer_rows(model, (1, 3, 32, 32), {})
    assert sum(int(r[3].replace(",", "")) for r in rows) == count_parameters(model)
    assert rows[-1][2] == "10"  # the last layer's output: one score per class
    assert ["features.0.1", "Conv2d", "32 x 32 x 32", "896", ""] in rows  # Keras: Conv2D(32, 3) on RGB, 896


def test_layer_rows_of_a_timm_backbone_count_its_own_norm_weights():
    model, _ = create_model("resnet18", 2, 3, (64, 64), "softmax", False)
    frozen = {n: p.numel() for n, p in model.named_parameters() if n.startswith("backbone.")}
    rows = layer_rows(model, (1, 3, 64, 64), frozen)
    params = sum(int(r[3].replace(",", "")) for r in rows)
    fixed = sum(int(r[4].replace(",", "")) for r in rows if r[4])
    assert params == sum(p.numel() for p in model.parameters())
    assert fixed == sum(frozen.values()) and fixed < params  # the head is trained
    assert len(rows) <= 40
