"""Fair meta-learning (in-processing): a classifier branch that predicts the sensitive attribute.

Total loss = alpha * L_seg + beta * L_cls (SPEC §1; the study: alpha 1, beta 2 for sex, alpha 1,
beta 1.5 for age). The classifier is a 3D DenseNet (models/densenet.py) that reads

    input "softmax+image"  the segmenter's softmax with the CT patch (default): L_cls reaches the
                           segmenter through its softmax, so the classification loss shapes it,
                           as in Puyol-Anton et al.'s fair meta-learning;
    input "image"          the CT patch alone: the branch learns beside the segmenter without
                           changing it (a control);
and with adversarial = true the gradient reaching the segmenter is reversed (Ganin & Lempitsky's
gradient reversal), so the segmenter is pushed to make its output *uninformative* of the group:
the adversarial debiasing the study's related work names.

Usage:
    branch = FairMetaBranch(groups=["male", "female"], input="softmax+image", adversarial=False)
    l_cls, logits = branch(image, seg_logits, group_index)
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from models.densenet import DenseNet3d

INPUTS = ("softmax+image", "image")


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class FairMetaBranch(nn.Module):
    def __init__(self, *, groups, num_seg_classes: int = 3, input: str = "softmax+image", adversarial: bool = False,
                 growth_rate: int = 8, block_config=(2, 2, 2), init_features: int = 16):
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"unknown fair-meta input {input!r}; valid: {', '.join(INPUTS)}")
        self.groups = list(groups)
        self.input, self.adversarial = input, adversarial
        in_channels = 1 + (num_seg_classes if input == "softmax+image" else 0)
        self.classifier = DenseNet3d(in_channels=in_channels, num_classes=len(self.groups), growth_rate=growth_rate,
                                     block_config=tuple(block_config), init_features=init_features)

    def forward(self, image: torch.Tensor, seg_logits: torch.Tensor, group_index: torch.Tensor):
        x = image
        if self.input == "softmax+image":
            probs = torch.softmax(seg_logits.float(), dim=1)
            if self.adversarial:
                probs = GradientReversal.apply(probs, 1.0)
            x = torch.cat([image.float(), probs], dim=1)
        logits = self.classifier(x)
        return F.cross_entropy(logits, group_index), logits
