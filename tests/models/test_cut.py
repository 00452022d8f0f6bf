"""Cutting a backbone at a stage boundary: the two parts compute what the whole does; costs are counted."""

import pytest
import timm
import torch
import torch.nn as nn

from oculi.errors import OculiError
from oculi.models import create_model
from oculi.models.cut import backbone_stages, count_macs, split_backbone, top_costs


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", 2, 3, (64, 64))[0].backbone.eval()


def test_the_bottom_then_the_top_compute_the_backbone(lite0):
    x = torch.randn(2, 3, 64, 64)
    for stages, cut in ((1, "blocks.6"), (2, "blocks.5"), (7, "blocks.0")):
        split = split_backbone(lite0, stages, x)
        assert (split.cut, split.stages, split.total) == (cut, stages, 7)
        with torch.no_grad():
            assert torch.allclose(split.top(split.bottom(x)), lite0(x), atol=1e-5)
        # the parts share the backbone's modules: training the top trains the model
        assert {id(p) for p in split.top.parameters()} <= {id(p) for p in lite0.parameters()}


def test_stages_follow_timms_block_groups_and_the_head_convs_join_the_last(lite0):
    stage = {name: s for name, _, s in backbone_stages(lite0)}
    assert stage["conv_stem"] == stage["bn1"] == 0
    assert [stage[f"blocks.{i}"] for i in range(7)] == list(range(1, 8))
    assert stage["conv_head"] == stage["bn2"] == stage["global_pool"] == 7


def test_other_families_cut_too():
    x = torch.randn(1, 3, 48, 48)
    resnet = timm.create_model("test_resnet", num_classes=0).eval()
    split = split_backbone(resnet, 1, x)
    assert split.cut == "layer4" and split.total == 4


def test_stages_out_of_range_name_the_flag(lite0):
    with pytest.raises(OculiError, match="--unfreeze-stages must be between 1 and 7"):
        split_backbone(lite0, 8, torch.randn(1, 3, 64, 64))


class SkipAcross(nn.Module):
    """Children that do not run one after the other: a skip connection over them."""

    def __init__(self):
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def group_matcher(self, coarse=False):
        return {"stem": r"^stem", "blocks": r"^body"}

    def forward(self, x):
        x = self.stem(x)
        return (x + self.body(x)).mean((2, 3))


def test_a_backbone_whose_layers_do_not_chain_is_refused():
    with pytest.raises(OculiError, match="do not run one after the other"):
        split_backbone(SkipAcross(), 1, torch.randn(1, 3, 8, 8))


def test_macs_are_counted_per_image_and_grow_with_the_top(lite0):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(5, 3, 10, 10)) == 10 * 10 * 8 * 3 * 3 * 3
    costs = top_costs(lite0, torch.zeros(1, 3, 64, 64), 3)
    assert [c.stages for c in costs] == [1, 2, 3]
    assert costs[0].macs < costs[1].macs < costs[2].macs < count_macs(lite0, torch.zeros(1, 3, 64, 64))
    assert costs[0].activation_bytes == 192 * 2 * 2 * 2  # blocks.6's input at 64 px: 192 x 2 x 2, float16

