"""The Plan: everything a run will do, decided once, before any image is decoded.

``resolve_plan(config, source)`` turns what the user asked for (``TrainConfig``, with its "auto"s) and a
cheap look at the data into one frozen object: the concrete settings, the pixel preprocessing, the
augmentation and the model to build. Training, the report, the augmentation preview and ``--resume`` read
it; none of them derives a setting again. It is written whole into the run's ``config.json``, so an old
run's report shows what that run did even after a preset changes.

Only the normalising statistics wait for later: pretrained weights bring theirs, a from-scratch model
takes the training set's, measured once it is decoded (``with_statistics``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import AUGMENTATION_KNOBS, TrainConfig
from .data.sources import DataSource
from .data.transforms import AUGMENT_PRESETS, Augmentation, Preprocessing
from .defaults import DataProbe, probe_source, resolve
from .models.spec import ModelSpec
from .route import route_of

@dataclass(frozen=True)
class Plan:
    config: TrainConfig  # every knob concrete: no "auto" or None left where a value was needed
    preprocessing: Preprocessing  # file -> model input; mean and std final once ``with_statistics`` ran
    augmentation: Augmentation | None  # None: training images are used as they are
    model: ModelSpec
    route: str = ""  # how it trains (oculi.route); "" in a plan built by hand: derived from the config

    def __post_init__(self):
        if not self.route:  # a plan saved before routes existed: derived once, on load
            object.__setattr__(self, "route", route_of(self.config))

    def with_statistics(self, mean: tuple[float, ...], std: tuple[float, ...]) -> "Plan":
        return dataclasses.replace(self, preprocessing=dataclasses.replace(self.preprocessing, mean=mean, std=std))

    def to_dict(self) -> dict:
        """The plan as config.json holds it."""
        return {"config": self.config.to_dict(), "preprocessing": self.preprocessing.to_dict(),
                "augmentation": self.augmentation.to_dict() if self.augmentation else None,
                "model": self.model.to_dict(), "route": self.route}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        augmentation = d.get("augmentation")
        return cls(TrainConfig.from_dict(d["config"]), Preprocessing.from_dict(d["preprocessing"]),
                   Augmentation(**augmentation) if augmentation else None, ModelSpec.from_dict(d["model"]),
                   d.get("route") or "")


def resolve_plan(asked: TrainConfig, source: DataSource, device_type: str = "cpu",
                 probe: DataProbe | None = None) -> Plan:
    """The plan for training on ``source`` as ``asked`` says, on a ``device_type`` device."""
    cfg = resolve(asked, source, probe or probe_source(source), device_type)
    preprocessing = Preprocessing(cfg.image_size, cfg.channels, cfg.resize, tta=cfg.tta, filter=cfg.filter)
    model = ModelSpec(cfg.model, len(source.classes), cfg.channels, cfg.image_size, cfg.head, cfg.classifier)
    return Plan(cfg, preprocessing, training_augmentation(cfg, source.flips_keep_class), model, route_of(cfg))


def training_augmentation(cfg: TrainConfig, flips_keep_class: bool = True) -> Augmentation | None:
    """The augmentation a resolved config asks for: its preset with each knob the user set (--rotation,
    --fill-mode, ...) in place of the preset's; None when it changes nothing. Flips are on with a preset
    unless the data says a mirrored image may be another class (digits), or the user says otherwise."""
    base = Augmentation(flip=False, translate=0.0) if cfg.augment == "none" else AUGMENT_PRESETS[cfg.augment]
    base = dataclasses.replace(base, flip=cfg.augment != "none" and flips_keep_class)
    knobs = {name: getattr(cfg, name) for name in AUGMENTATION_KNOBS}
    augmentation = dataclasses.replace(base, **{k: v for k, v in knobs.items() if v is not None})
    return augmentation if augmentation.changes_anything else None
