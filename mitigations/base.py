"""The interface every mitigation implements: the hooks train.py calls, in the same way for all.

A mitigation is built from its config section (`fairness.<name>`) and the run's group index
(data/group_index.py). train.py calls, for every mitigation the run uses, in registry order:

    sampler(**common)          pre-processing: the batch sampler (None: not this one's business)
    network_config(model_cfg)  the network description to build (dMoE adds its layers)
    build_module()             its extra module (the fair-meta classifier; DRO's buffers) or None;
                               called after the network is built (the order of weight init)
    param_groups()             its parameters for the optimiser, as torch param groups
    forward_kwargs(group)      what the network's forward needs besides x (dMoE: groups=)
    loss(loss, step)           the training loss from the per-sample losses and outputs:
                               returns (loss, {name: scalar to log})
    state_dict() / load_state_dict(state)   what a checkpoint must keep to resume exactly
    describe()                 one line for the run's log

`loss` is threaded through the mitigations: it starts as None (nothing has aggregated the
per-sample losses yet); a mitigation that aggregates them itself (DRO) returns its own, the
others build on `step.resolve(loss)`, which is the plain loss where nothing aggregated before
them. Whatever is still None at the end becomes the plain loss.

Usage (a new method is one subclass plus an entry in mitigations/__init__.py's registry):
    class MyMethod(Mitigation):
        name = "mine"
        def loss(self, loss, step):
            extra = ...
            return step.resolve(loss) + extra, {"mine_extra": extra.item()}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn as nn


@dataclass
class TrainStep:
    """What the loss hooks see of one training step."""
    image: torch.Tensor
    label: torch.Tensor
    group: torch.Tensor          # position of each sample's group in the run's group index
    outputs: object              # the network's outputs (a list with deep supervision)
    per_sample: torch.Tensor     # (B,) the segmentation loss of each sample
    network: nn.Module = None    # the network (unwrapped), for losses it keeps (dMoE load balance)
    plain: callable = field(repr=False, default=None)   # () -> the plain segmentation loss
    amp_dtype: torch.dtype | None = None
    progress: float = 1.0        # fraction of training done before this step (mitigations/schedules.py)

    @cached_property
    def plain_loss(self) -> torch.Tensor:
        return self.plain()

    def resolve(self, loss):
        """The segmentation loss so far: `loss`, or the plain loss when nothing aggregated yet."""
        return self.plain_loss if loss is None else loss

    @property
    def full_resolution(self) -> torch.Tensor:
        return self.outputs[0] if isinstance(self.outputs, (list, tuple)) else self.outputs


class Mitigation:
    name = "none"
    needs_groups = False           # every training case must have a group in the index
    ranks_samples = False          # per-sample losses that leave out classes absent from a patch

    def __init__(self, settings: dict, *, index):
        self.settings = dict(settings or {})
        self.index = index
        self.module: nn.Module | None = None
        self._wrapped: nn.Module | None = None    # the module as training calls it (DDP)

    # --- hooks ---------------------------------------------------------------------------------
    def describe(self) -> str:
        return ""

    def sampler(self, **common):
        return None

    def build_module(self) -> nn.Module | None:
        return None

    def network_config(self, model_cfg: dict) -> dict:
        return model_cfg

    def param_groups(self) -> list[dict]:
        if self.module is None:
            return []
        params = [p for p in self.module.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def forward_kwargs(self, group: torch.Tensor) -> dict:
        return {}

    def loss(self, loss, step: TrainStep):
        return loss, {}

    def state_dict(self) -> dict:
        return self.module.state_dict() if self.module is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.module is not None:
            self.module.load_state_dict(state)

    # --- plumbing the engine uses ----------------------------------------------------------------
    def setup(self, device) -> "Mitigation":
        """Build the extra module (after the network: weights are drawn in that order) on `device`."""
        self.module = self.build_module()
        if self.module is not None:
            self.module.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        if self.module is not None:
            self.module.train(mode)

    def wrap(self, wrapper) -> None:
        """Let training call the module through `wrapper` (DDP), if it has parameters to sync."""
        if self.module is not None and any(p.requires_grad for p in self.module.parameters()):
            self._wrapped = wrapper(self.module)

    @property
    def call(self) -> nn.Module:
        return self._wrapped if self._wrapped is not None else self.module
