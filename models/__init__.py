"""Networks of fairkits, built by name from the config's `model` section.

    model:
      name: nnunet            # nnunet | unet | vnet | attention_unet
      base_features: 32       # any keyword argument of the builder (see models/networks.py)
      deep_supervision: true

The network description a run builds (stored in its checkpoint as `model_config`) may also hold
`moe`: the dMoE layers that the dmoe mitigation adds (mitigations/dmoe.py), with its group list.
Swapping the architecture is itself one of the study's mitigations (mitigations/__init__.py).

Modules: blocks, encoder, decoder (derived from the encoder), networks (the four builders),
planning (nnU-Net's stage rule), losses, inference (the sliding window), embedding (the pooled
bottleneck, for failure discovery), checkpoint (self-describing checkpoints, read as data),
densenet (the fair meta-learning classifier). Not here: the mitigations that change a network
(mitigations/dmoe.py) or its loss (mitigations/dro.py).

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
        from mitigations.dmoe import MoESettings, attach_moe
        attach_moe(net, MoESettings.from_dict(moe))
    return net
