"""Subgroup-conditioned DRO loss aggregation, FairDRO's intra-group robustness (SPEC §2).

From the per-sample losses of a batch and each sample's group:

1. inside each group, the tail: CVaR at level alpha, the mean of the worst (largest) alpha
   fraction of the group's losses, k = max(1, ceil(alpha * n)) of n (fairness.tails.tail_size);
2. across groups, online group-DRO weights (Sagawa et al. 2020): q_g <- q_g * exp(eta * L_g),
   renormalised to sum 1, for the groups seen in the batch;
3. the loss: sum_g w_g * L_g over the groups in the batch, w_g = q_g * n_g / sum_h q_h * n_h.

Why the batch share n_g in w_g: with eta = 0 and alpha = 1 the loss is then exactly the plain
mean over the batch (the ERM loss, whatever the sampler's group mix), and q acts as Sagawa's
reweighting on top of the sampler; a group absent from a batch simply drops out of that step.

Why a history: a batch of 2-4 patches holds one or two samples per group, so its "worst 20 %" is
just its worst sample. Each group keeps the last `history` per-sample losses (detached). The tail
is taken over history + batch: L_g is the mean of the batch's samples among the pool's k worst
(the gradient flows through those), and the pool's CVaR (detached) drives q. When none of a
group's batch samples is in its tail, that group gives no gradient this step (its hard cases are
elsewhere) and only updates q. history = 0 gives the batch's own CVaR.

Under DDP the tail values that update q are averaged over ranks, so every rank keeps the same q.

Usage:
    dro = GroupDRO(n_groups=2, alpha=0.2, eta=0.01, history=32)
    loss = dro(per_sample_losses, group_index)    # scalar; dro.q, dro.last_tail for logging
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from fairness.tails import tail_size


class GroupDRO(nn.Module):
    def __init__(self, n_groups: int, *, alpha: float = 0.2, eta: float = 0.01, history: int = 32):
        super().__init__()
        if n_groups < 1:
            raise ValueError("GroupDRO needs at least one group")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"fairness.dro.alpha must be in (0, 1], got {alpha}")
        if eta < 0:
            raise ValueError(f"fairness.dro.eta must be >= 0, got {eta}")
        if history < 0:
            raise ValueError(f"fairness.dro.history must be >= 0, got {history}")
        self.n_groups, self.alpha, self.eta, self.history = n_groups, float(alpha), float(eta), int(history)
        # buffers: saved in checkpoints, so a resumed run continues with the same weights and tails
        self.register_buffer("q", torch.full((n_groups,), 1.0 / n_groups))
        self.register_buffer("past", torch.zeros(n_groups, max(history, 1)))
        self.register_buffer("past_count", torch.zeros(n_groups, dtype=torch.long))
        self.last_tail = torch.full((n_groups,), float("nan"))  # pool CVaR per group, last step

    def _pool(self, g: int) -> torch.Tensor:
        n = min(int(self.past_count[g]), self.history)
        return self.past[g, :n]

    def _remember(self, g: int, values: torch.Tensor) -> None:
        if self.history == 0:
            return
        for v in values.detach().float().tolist():
            slot = int(self.past_count[g]) % self.history
            self.past[g, slot] = v
            self.past_count[g] += 1

    def forward(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        losses = losses.float().view(-1)
        groups = torch.as_tensor(groups, device=losses.device).long().view(-1)
        if groups.numel() != losses.numel():
            raise ValueError(f"{groups.numel()} group indices for {losses.numel()} losses")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.n_groups):
            raise ValueError(f"group index out of range [0, {self.n_groups}): {groups.tolist()}")
        terms, counts = {}, torch.zeros(self.n_groups, device=self.q.device)
        tails = torch.full((self.n_groups,), float("nan"), device=self.q.device)
        for g in range(self.n_groups):
            mine = losses[groups == g]
            if mine.numel() == 0:
                continue
            past = self._pool(g).to(losses.device)
            pool = torch.cat([mine.detach(), past])
            k = tail_size(pool.numel(), self.alpha)
            worst = pool.topk(k).indices
            current = worst[worst < mine.numel()]  # positions of this batch's samples in the tail
            tails[g] = pool[worst].mean()
            if current.numel():
                terms[g] = mine[current].mean()
            counts[g] = mine.numel()
            self._remember(g, mine)
        present = counts > 0
        if dist.is_available() and dist.is_initialized():
            both = torch.stack([torch.nan_to_num(tails, nan=0.0) * present, present.float()])
            dist.all_reduce(both)
            present = both[1] > 0
            tails = torch.where(present, both[0] / both[1].clamp_min(1), tails)
        with torch.no_grad():
            self.q[present] *= torch.exp(self.eta * tails[present].to(self.q.device))
            self.q /= self.q.sum()
        self.last_tail = tails.detach().cpu()
        if not terms:
            return losses.sum() * 0.0  # nothing in any tail: a zero loss that still has a graph
        local = [g for g in range(self.n_groups) if counts[g] > 0]
        total = sum(self.q[g] * counts[g] for g in local)  # a group with no tail sample keeps its share
        return sum(self.q[g] * counts[g] / total * terms[g] for g in terms)
