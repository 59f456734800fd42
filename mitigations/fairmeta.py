"""Fair meta-learning (in-processing): a classifier branch that predicts the sensitive attribute.

Total loss = seg_weight * L_seg + cls_weight * L_cls (SPEC §1's alpha and beta; the study: 1 and 2
for sex, 1 and 1.5 for age). The classifier is a 3D DenseNet (models/densenet.py) that reads

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

In a run: `fairness.method: fairmeta` with `fairness.fairmeta: {seg_weight, cls_weight, input,
adversarial, classifier, cls_warmup, classifier_lr}` (the FairMeta class at the end: the branch,
its parameters, the loss). cls_warmup > 0 ramps cls_weight up linearly over that fraction of the
run (mitigations/schedules.py); classifier_lr gives the classifier its own learning rate. 0 and
null are the study's: beta at full weight from step one, one lr for all.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from mitigations.base import Mitigation
from mitigations.schedules import check_warmup, ramp
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


class FairMeta(Mitigation):
    """fairness.method fairmeta: seg_weight * L_seg + cls_weight * L_cls of the classifier branch."""
    name = "fairmeta"
    needs_groups = True

    def __init__(self, settings: dict, *, index):
        super().__init__(settings, index=index)
        s = self.settings
        self.seg_weight, self.cls_weight = s["seg_weight"], s["cls_weight"]
        if s["input"] not in INPUTS:
            raise ValueError(f"unknown fairness.fairmeta.input {s['input']!r}; valid: {', '.join(INPUTS)}")
        self.cls_warmup = check_warmup("fairness.fairmeta.cls_warmup", s.get("cls_warmup", 0.0))
        self.classifier_lr = s.get("classifier_lr")
        if self.classifier_lr is not None and not (isinstance(self.classifier_lr, (int, float)) and self.classifier_lr > 0):
            raise ValueError(f"fairness.fairmeta.classifier_lr must be a positive number or null, got {self.classifier_lr!r}")

    def build_module(self):
        s = self.settings
        return FairMetaBranch(groups=list(self.index.groups), input=s["input"], adversarial=s["adversarial"],
                              **s["classifier"])

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.classifier_lr is not None:
            for g in groups:
                g["lr"] = float(self.classifier_lr)   # the schedule scales it like the segmenter's
        return groups

    def describe(self) -> str:
        s = self.settings
        return (f"fair meta-learning on {self.index.attribute} ({', '.join(self.index.groups)}): {s['seg_weight']} * "
                f"L_seg + {s['cls_weight']} * L_cls, classifier input {s['input']}"
                + (", adversarial" if s["adversarial"] else "")
                + (f", cls_weight ramped up over the first {self.cls_warmup:.0%} of training" if self.cls_warmup else "")
                + (f", classifier lr {self.classifier_lr:g}" if self.classifier_lr is not None else ""))

    def loss(self, loss, step):
        seg = step.resolve(loss)
        with torch.autocast(device_type=step.image.device.type, dtype=step.amp_dtype,
                            enabled=step.amp_dtype is not None):
            loss_cls, logits = self.call(step.image, step.full_resolution, step.group)
        cls_weight = self.cls_weight * ramp(step.progress, self.cls_warmup)
        scalars = {"L_cls": loss_cls.item(), "cls_weight": cls_weight}
        hits = (logits.argmax(1) == step.group).float()
        for i, g in enumerate(self.index.groups):
            if (step.group == i).any():
                scalars[f"cls_accuracy/{g}"] = hits[step.group == i].mean().item()
        return self.seg_weight * seg + cls_weight * loss_cls, scalars
