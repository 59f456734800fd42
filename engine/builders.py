"""The training objects a config names: loss, optimiser, learning-rate schedule (registries).

Usage:
    check_choices(cfg)                                     # every name valid, before any work
    criterion = build_loss(cfg["loss"])
    optimizer = build_optimizer(cfg["optim"], [{"params": net.parameters()}, *extra_groups])
    scheduler = build_schedule(cfg["optim"], optimizer, epochs=cfg["train"]["epochs"])
"""
from __future__ import annotations

import torch

from config import ConfigError
from models.losses import DiceCELoss

LOSSES = {"dice_ce": DiceCELoss}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "poly")


def check_choices(cfg: dict) -> None:
    """Names that pick code (model, loss, optimiser, schedule, mitigations): checked before a
    folder is made or data read."""
    from config import _check_methods
    from models import MODELS
    for section, key, valid in (("model", "name", MODELS), ("loss", "name", LOSSES),
                                ("optim", "name", OPTIMIZERS), ("optim", "schedule", SCHEDULES)):
        if cfg[section][key] not in valid:
            raise ConfigError(f"unknown {section}.{key} {cfg[section][key]!r}; valid: {', '.join(sorted(valid))}")
    _check_methods(cfg["fairness"]["method"])


def build_loss(cfg: dict) -> DiceCELoss:
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](**cfg)


def build_optimizer(cfg: dict, param_groups):
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimiser {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(param_groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def build_schedule(cfg: dict, optimizer, epochs: int):
    if cfg["schedule"] not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg['schedule']!r}; valid: {', '.join(SCHEDULES)}")
    if cfg["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    # nnU-Net's poly: lr * (1 - epoch / epochs) ** 0.9, stepped once per epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: (1 - min(epoch, epochs - 1) / epochs) ** cfg["poly_exponent"])
