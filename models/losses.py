"""Segmentation losses: soft Dice + cross-entropy, per sample or batch, and deep supervision.

    loss = ce_weight * CE + dice_weight * (1 - soft Dice)
    soft Dice per class c = (2 sum(p_c y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth), softmax p,
    background excluded, smooth 1e-5 (SPEC §1); averaged over the foreground classes.
With `batch_dice` the sums run over the whole batch (nnU-Net's option); otherwise per sample
and then averaged. `per_sample` always gives one loss per sample (B,), which the fairness
mitigations (group losses, DRO) need.

Deep supervision (nnU-Net's rule): a loss at every decoder output, weights 1/2^i from full
resolution down, the lowest resolution weighted 0, normalised to sum 1; targets are downsampled
to each output with nearest neighbour.

Usage:
    criterion = DeepSupervisionLoss(DiceCELoss(), n_outputs=len(outputs))
    total, per_level = criterion(outputs, target)      # target (B, Z, Y, X) int64
    per_sample = criterion.per_sample(outputs, target)  # (B,)
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).to(torch.float32)


def _as_index(target: torch.Tensor) -> torch.Tensor:
    """(B, 1, Z, Y, X) or (B, Z, Y, X) -> (B, Z, Y, X) int64."""
    if target.dim() == 5:
        target = target[:, 0]
    return target.long()


class DiceCELoss(nn.Module):
    def __init__(self, *, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5,
                 batch_dice: bool = False, include_background: bool = False):
        super().__init__()
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth
        self.batch_dice, self.include_background = batch_dice, include_background

    def soft_dice(self, logits: torch.Tensor, target: torch.Tensor, *, batch: bool,
                  skip_absent: bool = False) -> torch.Tensor:
        """Soft Dice per sample (B,) or, with batch=True, one value for the batch (shape ()).

        skip_absent (per sample only): average over the classes present in the sample's target, and
        1 (no Dice loss) when none is. With smooth 1e-5 an absent class's soft Dice is ~0 whatever
        the prediction (and its gradient ~0), so without this every background patch would look
        like the worst case to anything that ranks samples by loss (DRO's tails).
        """
        probs = torch.softmax(logits.float(), dim=1)
        onehot = _one_hot(target, logits.shape[1])
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = (0, 2, 3, 4) if batch else (2, 3, 4)
        intersect = (probs * onehot).sum(dims)
        denominator = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersect + self.smooth) / (denominator + self.smooth).clamp_min(1e-8)
        if skip_absent and not batch:
            present = (onehot.sum(dims) > 0).float()
            n_present = present.sum(-1)
            return torch.where(n_present > 0, (dice * present).sum(-1) / n_present.clamp_min(1), torch.ones_like(n_present))
        return dice.mean(-1)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor, *, skip_absent: bool = False) -> torch.Tensor:
        target = _as_index(target)
        ce = F.cross_entropy(logits.float(), target, reduction="none").flatten(1).mean(1)
        dice = self.soft_dice(logits, target, batch=False, skip_absent=skip_absent)
        return self.ce_weight * ce + self.dice_weight * (1 - dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.batch_dice:
            return self.per_sample(logits, target).mean()
        target = _as_index(target)
        ce = F.cross_entropy(logits.float(), target)
        return self.ce_weight * ce + self.dice_weight * (1 - self.soft_dice(logits, target, batch=True))


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """1/2^i, the lowest resolution 0 (when there is more than one output), normalised to 1."""
    weights = [1 / 2 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, size) -> torch.Tensor:
    target = _as_index(target)
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    def __init__(self, loss: DiceCELoss, n_outputs: int, weights=None):
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else deep_supervision_weights(n_outputs)
        if len(self.weights) != n_outputs:
            raise ValueError(f"{len(self.weights)} deep-supervision weights for {n_outputs} outputs")

    def _levels(self, outputs, target):
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        if len(outputs) != len(self.weights):
            raise ValueError(f"the network gave {len(outputs)} outputs, the loss expects {len(self.weights)}")
        for out, w in zip(outputs, self.weights):
            yield out, downsample_target(target, out.shape[2:]), w

    def forward(self, outputs, target) -> tuple[torch.Tensor, list[torch.Tensor]]:
        per_level = [self.loss(out, t) for out, t, w in self._levels(outputs, target)]
        total = sum(w * l for w, l in zip(self.weights, per_level) if w > 0)
        return total, per_level

    def per_sample_levels(self, outputs, target, *, skip_absent: bool = False) -> torch.Tensor:
        """(B, n_outputs) per-sample losses at every level (zero-weighted levels included)."""
        return torch.stack([self.loss.per_sample(out, t, skip_absent=skip_absent)
                            for out, t, _ in self._levels(outputs, target)], dim=1)

    def per_sample(self, outputs, target, *, skip_absent: bool = False) -> torch.Tensor:
        levels = self.per_sample_levels(outputs, target, skip_absent=skip_absent)
        return levels @ torch.tensor(self.weights, dtype=levels.dtype, device=levels.device)
