"""Networks of fairkits, built by name from the config's `model` section.

    model:
      name: nnunet            # nnunet | unet | vnet | attention_unet
      base_features: 32       # any keyword argument of the builder (see models/networks.py)
      deep_supervision: true

Usage:
    net = build_model({"name": "nnunet"}, patch_size=(80, 160, 160), in_channels=1, num_classes=3)
"""
from __future__ import annotations

import inspect

from models.networks import SegmentationNetwork, attention_unet, nnunet, unet, vnet

MODELS = {"nnunet": nnunet, "unet": unet, "vnet": vnet, "attention_unet": attention_unet}


def build_model(cfg: dict, *, patch_size, in_channels: int = 1, num_classes: int = 3) -> SegmentationNetwork:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    valid = set(inspect.signature(builder).parameters) - {"patch_size", "in_channels", "num_classes"}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return builder(patch_size=tuple(patch_size), in_channels=in_channels, num_classes=num_classes, **cfg)
