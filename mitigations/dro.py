"""Subgroup-conditioned DRO loss aggregation, FairDRO's intra-group robustness (SPEC §2).

From the per-sample losses of a batch and each sample's group:

1. inside each group, the tail: CVaR at level alpha, the mean of the worst (largest) alpha
   fraction of the group's losses;
2. across groups, online group-DRO weights (Sagawa et al. 2020): q_g <- q_g * exp(eta * L_g),
   renormalised to sum 1, for the groups seen in the batch;
3. the loss: sum_g w_g * L_g over the groups in the batch, w_g = q_g * n_g / sum_h q_h * n_h.

Why the batch share n_g in w_g: with eta = 0 and alpha = 1 the loss is then exactly the plain
mean over the batch (the ERM loss, whatever the sampler's group mix), and q acts as Sagawa's
reweighting on top of the sampler; a group absent from a batch simply drops out of that step.

Why not the batch's own tail: a batch of 2-4 patches holds one or two samples per group, so its
"worst 20 %" is just its worst sample. CVaR is therefore estimated in Rockafellar and Uryasev's
form, which needs no sorting and works with any batch size:

    CVaR_alpha(L) = min_tau  tau + E[(L - tau)+] / alpha,

with one threshold tau_g per group tracked online (a stochastic-gradient step on tau, `tau_lr`
per step: it rises while more than alpha of the group's samples exceed it and falls otherwise,
so it follows the group's alpha-quantile as the losses fall during training). L_g =
tau_g + mean_i (l_i - tau_g)+ / alpha over the batch's samples of g: the gradient flows through
the samples above the threshold, weighted 1/alpha, which is CVaR's gradient in expectation.
tau_g starts at the group's first batch's empirical alpha-quantile. alpha = 1 is the plain mean
(CVaR at level 1), with no threshold. (A first version kept a history of past losses and took
the tail over it; as the losses fell, the stale ones filled the tail and most steps had no
gradient at all: the runs did not learn. The threshold form has no such memory.)

Under DDP the values that update q and tau are averaged over the ranks that saw the group, so
every rank keeps the same q and tau.

Usage:
    dro = GroupDRO(n_groups=2, cvar_level=0.2, eta=0.01, tau_lr=0.05)
    loss = dro(per_sample_losses, group_index)    # scalar; dro.q, dro.tau, dro.last_tail for logging

In a run: `fairness.method: dro` with `fairness.dro: {cvar_level, eta, tau_lr, warmup}` (the DRO
class at the end, the loss hook; with dMoE that is FairDRO). `warmup` > 0 trains on the plain loss
for that fraction of the run first (mitigations/schedules.py); 0 is the study's DRO from step one.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn

from mitigations.base import Mitigation
from mitigations.schedules import check_warmup, started

from fairness.tails import tail_size


def rockafellar_uryasev(losses: torch.Tensor, tau, alpha: float) -> torch.Tensor:
    """tau + mean((losses - tau)+) / alpha: the CVaR at alpha when tau is the alpha-quantile
    (and an upper bound of it for any other tau)."""
    return tau + torch.clamp(losses - tau, min=0).mean() / alpha


def empirical_var(losses: torch.Tensor, alpha: float) -> float:
    """The k-th largest loss, k = max(1, ceil(alpha * n)): the threshold of the empirical tail."""
    k = tail_size(losses.numel(), alpha)
    return float(losses.detach().topk(k).values[-1])


class GroupDRO(nn.Module):
    def __init__(self, n_groups: int, *, cvar_level: float = 0.2, eta: float = 0.01, tau_lr: float = 0.05):
        super().__init__()
        if n_groups < 1:
            raise ValueError("GroupDRO needs at least one group")
        if not 0.0 < cvar_level <= 1.0:
            raise ValueError(f"fairness.dro.cvar_level must be in (0, 1], got {cvar_level}")
        if eta < 0:
            raise ValueError(f"fairness.dro.eta must be >= 0, got {eta}")
        if tau_lr <= 0:
            raise ValueError(f"fairness.dro.tau_lr must be > 0, got {tau_lr}")
        self.n_groups, self.alpha, self.eta, self.tau_lr = n_groups, float(cvar_level), float(eta), float(tau_lr)
        # buffers: saved in checkpoints, so a resumed run continues with the same weights and thresholds
        self.register_buffer("q", torch.full((n_groups,), 1.0 / n_groups))
        self.register_buffer("tau", torch.zeros(n_groups))
        self.register_buffer("seen", torch.zeros(n_groups, dtype=torch.bool))
        self.last_tail = torch.full((n_groups,), float("nan"))  # L_g per group, last step

    def forward(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        losses = losses.float().view(-1)
        groups = torch.as_tensor(groups, device=losses.device).long().view(-1)
        if groups.numel() != losses.numel():
            raise ValueError(f"{groups.numel()} group indices for {losses.numel()} losses")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.n_groups):
            raise ValueError(f"group index out of range [0, {self.n_groups}): {groups.tolist()}")
        device = self.q.device
        terms = {}
        counts = torch.zeros(self.n_groups, device=device)
        values = torch.zeros(self.n_groups, device=device)       # L_g, detached (for q)
        tau_steps = torch.zeros(self.n_groups, device=device)    # d(RU)/d(tau) per group
        first_tau = torch.zeros(self.n_groups, device=device)
        for g in range(self.n_groups):
            mine = losses[groups == g]
            if mine.numel() == 0:
                continue
            counts[g] = mine.numel()
            if self.alpha == 1.0:
                terms[g] = mine.mean()
            else:
                tau = self.tau[g] if self.seen[g] else torch.tensor(empirical_var(mine, self.alpha), device=device)
                first_tau[g] = tau
                terms[g] = rockafellar_uryasev(mine, tau.to(mine.device), self.alpha)
                above = (mine.detach() > tau.to(mine.device)).float().mean()
                tau_steps[g] = 1.0 - above / self.alpha
            values[g] = terms[g].detach().to(device)
        present = counts > 0
        if dist.is_available() and dist.is_initialized():
            packed = torch.stack([values * present, tau_steps * present, first_tau * present, present.float()])
            dist.all_reduce(packed)
            present = packed[3] > 0
            n = packed[3].clamp_min(1)
            values, tau_steps, first_tau = packed[0] / n, packed[1] / n, packed[2] / n
        with torch.no_grad():
            if self.alpha < 1.0:
                new = present & ~self.seen
                self.tau[new] = first_tau[new]
                self.seen |= present
                self.tau[present] -= self.tau_lr * tau_steps[present]
            self.q[present] *= torch.exp(self.eta * values[present])
            self.q /= self.q.sum()
        self.last_tail = torch.where(present, values, torch.full_like(values, float("nan"))).cpu()
        if not terms:
            return losses.sum() * 0.0  # an empty batch: a zero loss that still has a graph
        local = [g for g in range(self.n_groups) if counts[g] > 0]
        total = sum(self.q[g] * counts[g] for g in local)
        return sum(self.q[g] * counts[g] / total * terms[g] for g in terms)


class DRO(Mitigation):
    """fairness.method dro: the per-sample losses aggregated by GroupDRO over the run's groups."""
    name = "dro"
    needs_groups = True
    ranks_samples = True   # a class absent from a patch must not count as a failure there

    def __init__(self, settings: dict, *, index):
        super().__init__(settings, index=index)
        self.warmup = check_warmup("fairness.dro.warmup", self.settings.get("warmup", 0.0))
        self.dro_args = {k: v for k, v in self.settings.items() if k != "warmup"}
        GroupDRO(n_groups=len(index.groups), **self.dro_args)   # settings checked before any work

    def build_module(self):
        return GroupDRO(n_groups=len(self.index.groups), **self.dro_args)

    def describe(self) -> str:
        s = self.settings
        return (f"DRO loss over {self.index.attribute} ({', '.join(self.index.groups)}): CVaR{s['cvar_level']:g} "
                f"within groups (threshold step {s['tau_lr']:g}), group weights eta {s['eta']:g}"
                + (f", after the plain loss for the first {self.warmup:.0%} of training" if self.warmup else ""))

    def loss(self, loss, step):
        if not started(step.progress, self.warmup):   # thresholds and weights wait for the warm-up's end
            return step.resolve(loss), {"dro_active": 0.0}
        dro = self.module
        loss = dro(step.per_sample, step.group)
        scalars = {"dro_active": 1.0}
        for i, g in enumerate(self.index.groups):
            scalars[f"dro_q/{g}"] = dro.q[i].item()
            if not math.isnan(dro.last_tail[i]):
                scalars[f"dro_tail_loss/{g}"] = dro.last_tail[i].item()
            scalars[f"dro_tau/{g}"] = dro.tau[i].item()
        return loss, scalars
