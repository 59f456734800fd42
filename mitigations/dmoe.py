"""dMoE: distribution-aware mixture of experts, FairDRO's inter-group adaptation (SPEC §2).

At chosen encoder stages (the last one is the bottleneck) the features h of every voxel become

    h + sum_k gate_k(h) * expert_k(h)

where the experts are small per-voxel MLPs (1x1x1 convs C -> hidden_ratio*C -> C, LeakyReLU)
shared by everyone, and the gate comes from a router chosen by the sample's group (one router per
group value: the groups share what the experts know and differ in how they use it). The router is
Shazeer et al.'s noisy top-k gating: logits W_g h, plus, while training, Gaussian noise scaled by
softplus(W_noise h); the k largest logits are softmaxed, the others get gate 0. `router:
shared` is the plain-MoE ablation: one router for all groups, no group needed.

All experts are evaluated densely and the gates zero all but the top k: dMoE sits at the deep,
low-resolution stages where that is cheaper than sparse dispatch (memory grows with
experts * hidden_ratio * C per voxel; keep it off the full-resolution stages).

Load balancing (optional, `balance_weight` > 0 in the config): Shazeer's importance loss, the
squared coefficient of variation of the experts' summed gates over the batch's voxels, so that
routers do not collapse onto one expert. It is exposed as `aux_loss` after each forward.

The group of each sample reaches the model as an index tensor: `net(x, groups=idx)`; the group
names and their order are part of the model config (`model.moe.groups`), so a checkpoint knows
them and evaluation routes each case by its own metadata.

In a run: `fairness.method: dmoe` (with dro: FairDRO) and `fairness.dmoe: {stages, experts, top_k,
hidden_ratio, router, noise, balance_weight}`; the DMoERouting class at the end adds the layers
to the network description (`moe`, with the run's group list, stored in the checkpoint) and
passes each sample's group to the forward. The networks themselves (models/) only know that an
encoder stage may be followed by a block taking `groups`.

Usage:
    net = build_model({"name": "nnunet", "moe": {"stages": [-2, -1], "experts": 8, "top_k": 2,
                       "groups": ["male", "female"]}}, patch_size=(32, 64, 64))
    out = net(x, groups=torch.tensor([0, 1]))
    WithGroup(net, 1)(x)            # one case's group for every tile (the sliding window)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataclasses import dataclass, field, fields

from mitigations.base import Mitigation

ROUTERS = ("group", "shared")


class Experts(nn.Module):
    """K per-voxel MLPs C -> hidden -> C, evaluated together as grouped 1x1x1 convolutions."""

    def __init__(self, channels: int, n_experts: int, hidden_ratio: int):
        super().__init__()
        self.channels, self.n_experts = channels, n_experts
        hidden = hidden_ratio * channels
        self.up = nn.Conv3d(n_experts * channels, n_experts * hidden, 1, groups=n_experts)
        self.down = nn.Conv3d(n_experts * hidden, n_experts * channels, 1, groups=n_experts)
        nn.init.zeros_(self.down.weight)  # each block starts as the identity: h + 0
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, K, C, *S)"""
        b, c, *space = h.shape
        out = self.down(F.leaky_relu(self.up(h.repeat(1, self.n_experts, *([1] * len(space)))), 0.01))
        return out.view(b, self.n_experts, c, *space)


class NoisyTopKRouter(nn.Module):
    """Gates (B, K, *S) from features, per group: n_routers sets of (W_gate, W_noise)."""

    def __init__(self, channels: int, n_experts: int, top_k: int, n_routers: int, noise: bool):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe.top_k must be in [1, experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k, self.n_routers, self.noise = n_experts, top_k, n_routers, noise
        self.gate = nn.Conv3d(channels, n_routers * n_experts, 1, bias=False)
        self.noise_scale = nn.Conv3d(channels, n_routers * n_experts, 1, bias=False)
        nn.init.zeros_(self.gate.weight)  # uniform routing at the start; the noise breaks ties
        nn.init.zeros_(self.noise_scale.weight)

    def _pick(self, logits: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
        b, _, *space = logits.shape
        logits = logits.view(b, self.n_routers, self.n_experts, *space)
        index = router.view(b, 1, 1, *([1] * len(space))).expand(b, 1, self.n_experts, *space)
        return logits.gather(1, index).squeeze(1)

    def forward(self, h: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
        logits = self._pick(self.gate(h), router)
        if self.noise and self.training:
            scale = F.softplus(self._pick(self.noise_scale(h), router))
            logits = logits + torch.randn_like(logits) * scale
        top, idx = logits.topk(self.top_k, dim=1)
        gates = torch.zeros_like(logits).scatter(1, idx, torch.softmax(top.float(), dim=1).to(logits.dtype))
        return gates


class DMoE(nn.Module):
    """h + sum_k gate_k(h) * expert_k(h), the router picked by each sample's group."""

    def __init__(self, channels: int, *, n_groups: int, experts: int = 8, top_k: int = 2, hidden_ratio: int = 4,
                 router: str = "group", noise: bool = True):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"unknown moe.router {router!r}; valid: {', '.join(ROUTERS)}")
        self.router_kind = router
        self.n_groups = n_groups
        self.experts = Experts(channels, experts, hidden_ratio)
        self.router = NoisyTopKRouter(channels, experts, top_k, n_groups if router == "group" else 1, noise)
        self.aux_loss = torch.zeros(())

    def forward(self, h: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        if self.router_kind == "shared":
            routes = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        else:
            if groups is None:
                raise ValueError("this network routes by group (dMoE): call it as net(x, groups=index_per_sample)")
            routes = torch.as_tensor(groups, device=h.device).long().view(-1)
            if routes.numel() != h.shape[0]:
                raise ValueError(f"{routes.numel()} group indices for a batch of {h.shape[0]}")
            if routes.numel() and (routes.min() < 0 or routes.max() >= self.n_groups):
                raise ValueError(f"group index out of range [0, {self.n_groups}): {routes.tolist()}")
        gates = self.router(h, routes)                                 # (B, K, *S)
        mixed = (gates.unsqueeze(2) * self.experts(h)).sum(1)          # (B, C, *S)
        importance = gates.float().sum(dim=[0, *range(2, gates.dim())])  # per expert
        self.aux_loss = importance.var(unbiased=False) / importance.mean().clamp_min(1e-9) ** 2  # CV^2 (Shazeer)
        return h + mixed


def resolve_stages(stages, n_stages: int) -> list[int]:
    """Stage indices (negative counts from the bottleneck, -1) as sorted non-negative ints."""
    resolved = []
    for s in stages:
        i = int(s) + n_stages if int(s) < 0 else int(s)
        if not 0 <= i < n_stages:
            raise ValueError(f"moe.stages: {s} is not a stage of this {n_stages}-stage encoder "
                             f"(0..{n_stages - 1}, or -1 for the bottleneck)")
        resolved.append(i)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"moe.stages names a stage twice: {list(stages)}")
    return sorted(resolved)


@dataclass
class MoESettings:
    stages: list = field(default_factory=lambda: [-2, -1])
    experts: int = 8
    top_k: int = 2
    hidden_ratio: int = 4
    router: str = "group"
    noise: bool = True
    balance_weight: float = 0.0   # weight of the load-balancing loss in training (0: off)
    attribute: str | None = None  # the grouping attribute (the run's group index); in the network description
    groups: list | None = None    # group names in router order; in the network description

    @classmethod
    def from_dict(cls, values: dict) -> "MoESettings":
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"fairness.dmoe has no option(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**values)


def attach_moe(net, settings: MoESettings):
    """Add a dMoE block after each of the listed encoder stages of a SegmentationNetwork."""
    n_groups = 1
    if settings.router == "group":
        if not settings.groups:
            raise ValueError("the dMoE network description has no groups: a group router needs the group names "
                             "(train.py fills them in from the run's group index)")
        n_groups = len(settings.groups)
    for i in resolve_stages(settings.stages, len(net.encoder.features)):
        net.encoder.moe[str(i)] = DMoE(net.encoder.features[i], n_groups=n_groups, experts=settings.experts,
                                       top_k=settings.top_k, hidden_ratio=settings.hidden_ratio,
                                       router=settings.router, noise=settings.noise)
    return net


class WithGroup(nn.Module):
    """A group-routed network seen as x -> y for one case's group (every tile of a case shares it)."""

    def __init__(self, net: nn.Module, group: int):
        super().__init__()
        self.net, self.group = net, int(group)

    def forward(self, x):
        return self.net(x, groups=torch.full((x.shape[0],), self.group, dtype=torch.long, device=x.device))


class DMoERouting(Mitigation):
    """fairness.method dmoe: dMoE layers in the network, each sample routed by its group."""
    name = "dmoe"

    def __init__(self, settings: dict, *, index):
        super().__init__(settings, index=index)
        MoESettings.from_dict(self.settings)
        self.routed = self.settings["router"] == "group"
        self.needs_groups = self.routed
        self.balance_weight = self.settings["balance_weight"]

    def describe(self) -> str:
        if not self.routed:
            return f"plain MoE (one shared router) after encoder stages {self.settings['stages']}"
        return (f"dMoE routed by {self.index.attribute}: "
                + ", ".join(f"{g} -> router {i}" for i, g in enumerate(self.index.groups)))

    def network_config(self, model_cfg: dict) -> dict:
        moe = dict(self.settings)
        if self.routed:
            moe.update(attribute=self.index.attribute, groups=list(self.index.groups))
        return {**model_cfg, "moe": moe}

    def forward_kwargs(self, group):
        return {"groups": group} if self.routed else {}

    def loss(self, loss, step):
        if self.balance_weight:
            loss = step.resolve(loss) + self.balance_weight * step.network.moe_aux_loss()
        scalars = {}
        if self.routed or self.balance_weight:
            scalars["moe_balance_loss"] = step.network.moe_aux_loss().item()
        return loss, scalars
