"""Networks of fairkits, built by name from the config's `model` section.

    model:
      name: nnunet            # nnunet | unet | vnet | attention_unet
      base_features: 32       # any keyword argument of the builder (see models/networks.py)
      deep_supervision: true
      moe:                    # optional: dMoE layers (FairDRO, models/moe.py)
        stages: [-2, -1]      # encoder stages (-1 = bottleneck) followed by a dMoE block
        experts: 8
        top_k: 2
        router: group         # group: one router per group value; shared: plain MoE
        groups: [male, female]   # filled in by train.py from fairness.attribute

Usage:
    net = build_model({"name": "nnunet"}, patch_size=(80, 160, 160), in_channels=1, num_classes=3)
"""
from __future__ import annotations

import inspect

from dataclasses import dataclass, field, fields

from models.moe import DMoE, resolve_stages
from models.networks import SegmentationNetwork, attention_unet, nnunet, unet, vnet

MODELS = {"nnunet": nnunet, "unet": unet, "vnet": vnet, "attention_unet": attention_unet}


@dataclass
class MoESettings:
    stages: list = field(default_factory=lambda: [-2, -1])
    experts: int = 8
    top_k: int = 2
    hidden_ratio: int = 4
    router: str = "group"
    noise: bool = True
    balance_weight: float = 0.0   # weight of the load-balancing loss in training (0: off)
    attribute: str | None = None  # the grouping attribute; None: fairness.attribute
    groups: list | None = None    # group names in router order; filled in by train.py

    @classmethod
    def from_dict(cls, values: dict) -> "MoESettings":
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"model.moe has no option(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**values)


def attach_moe(net: SegmentationNetwork, settings: MoESettings) -> SegmentationNetwork:
    n_groups = 1
    if settings.router == "group":
        if not settings.groups:
            raise ValueError("model.moe.groups is empty: a group router needs the group names "
                             "(train.py fills them in from fairness.attribute)")
        n_groups = len(settings.groups)
    for i in resolve_stages(settings.stages, len(net.encoder.features)):
        net.encoder.moe[str(i)] = DMoE(net.encoder.features[i], n_groups=n_groups, experts=settings.experts,
                                       top_k=settings.top_k, hidden_ratio=settings.hidden_ratio,
                                       router=settings.router, noise=settings.noise)
    return net


def build_model(cfg: dict, *, patch_size, in_channels: int = 1, num_classes: int = 3) -> SegmentationNetwork:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    moe = cfg.pop("moe", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    valid = set(inspect.signature(builder).parameters) - {"patch_size", "in_channels", "num_classes"} | {"moe"}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    net = builder(patch_size=tuple(patch_size), in_channels=in_channels, num_classes=num_classes, **cfg)
    if moe:
        attach_moe(net, MoESettings.from_dict(moe))
    return net
