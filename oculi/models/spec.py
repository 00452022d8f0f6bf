"""What a network is, in words: enough to build it again (training, a bundle, the plan)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the network: registry or timm name and the shape of its input and output."""

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    head: str
    classifier: str = "linear"  # the layers on a timm backbone's features: linear | mlp

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "image_size": list(self.image_size), "head": self.head, "classifier": self.classifier}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """A spec from ``to_dict``'s output (a bundle's model.json is checked field by field instead)."""
        return cls(d["name"], int(d["num_classes"]), int(d["in_chans"]), tuple(d["image_size"]), d["head"],
                   d.get("classifier", "linear"))

    def build(self) -> nn.Module:
        """The network with fresh (untrained) weights."""
        return self.create()[0]

    def create(self, pretrained: bool = False, weights_file: str | None = None):
        """(the network, where its weights came from: None without pretrained weights)."""
        from . import create_model
        return create_model(self.name, self.num_classes, self.in_chans, self.image_size, self.head, pretrained,
                            self.classifier, weights_file)
