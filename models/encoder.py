"""The encoder: a stack of stages, each downsampling (except the first) and then convolving.

Per-stage arguments (features, strides, kernel sizes, convs per stage) come from the config or
from `models.planning.plan_stages`. The decoder is derived from an encoder (models/decoder.py),
so the two always agree on stages, widths and strides.

Downsampling:
    "conv"       the first conv of the stage is strided (nnU-Net)
    "maxpool"    max-pool with the stage's stride, then the convs (U-Net, Attention U-Net)
    "conv_down"  a separate strided conv with kernel = stride, then the stage (V-Net)
Stage blocks: "plain" (StackedConvs) or "residual" (ResidualStage).

Usage:
    enc = Encoder(in_channels=1, features=(32, 64), strides=((1,1,1), (2,2,2)), kernel_sizes=(3, 3))
    skips = enc(x)        # one tensor per stage, full resolution first
"""
from __future__ import annotations

import torch
from torch import nn

from models.blocks import ConvNormAct, ResidualStage, StackedConvs

DOWNSAMPLING = ("conv", "maxpool", "conv_down")
STAGE_BLOCKS = ("plain", "residual")


def _per_stage(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} stages")
    return values


class Encoder(nn.Module):
    def __init__(self, in_channels: int, features, strides, kernel_sizes, n_convs=2, downsample: str = "conv",
                 block: str = "plain", norm: str = "instance", act: str = "leakyrelu"):
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"unknown downsample {downsample!r}; valid: {', '.join(DOWNSAMPLING)}")
        if block not in STAGE_BLOCKS:
            raise ValueError(f"unknown block {block!r}; valid: {', '.join(STAGE_BLOCKS)}")
        n = len(features)
        self.features = [int(f) for f in features]
        self.strides = [tuple(s) if isinstance(s, (list, tuple)) else (s,) * 3 for s in _per_stage(strides, n, "strides")]
        self.kernel_sizes = _per_stage(kernel_sizes, n, "kernel_sizes")
        self.n_convs = _per_stage(n_convs, n, "n_convs")
        self.norm, self.act, self.block = norm, act, block
        stages = []
        previous = in_channels
        for i, (feat, stride, kernel, convs) in enumerate(zip(self.features, self.strides, self.kernel_sizes,
                                                               self.n_convs)):
            layers = []
            strided = tuple(stride) != (1, 1, 1)
            if strided and downsample == "maxpool":
                layers.append(nn.MaxPool3d(kernel_size=stride, stride=stride))
            elif strided and downsample == "conv_down":
                layers.append(ConvNormAct(previous, feat, kernel_size=stride, stride=stride, norm=norm, act=act))
                previous = feat
            first_stride = stride if (strided and downsample == "conv") else 1
            if block == "plain":
                layers.append(StackedConvs(previous, feat, convs, kernel, first_stride, norm, act))
            else:
                if first_stride != 1:
                    raise ValueError("residual stages need downsample 'maxpool' or 'conv_down'")
                layers.append(ResidualStage(feat, convs, kernel, norm, act, in_channels=previous))
            stages.append(nn.Sequential(*layers))
            previous = feat
        self.stages = nn.ModuleList(stages)
        self.moe = nn.ModuleDict()  # stage index -> models.moe.DMoE after that stage (FairDRO)

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> list[torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if str(i) in self.moe:
                x = self.moe[str(i)](x, groups)
            skips.append(x)
        return skips
