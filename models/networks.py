"""The study's four networks, each an Encoder plus the Decoder derived from it.

    nnunet          plain conv U-Net: 2 x (conv3 -> InstanceNorm -> LeakyReLU 0.01) per stage,
                    32 features doubling to 320, strided-conv down, transposed-conv up
                    (`first_stage_convs: 1` makes the full-resolution stage one conv, in the
                    plain networks: the demo's cheaper fp32 recipe)
    unet            3D U-Net (Cicek et al.): conv-BatchNorm-ReLU pairs, max-pool down
    vnet            V-Net (Milletari et al.): 5x5x5 convs in residual stages (1, 2, 3, 3, ... convs),
                    strided 2x2x2 conv down, PReLU
    attention_unet  Attention U-Net (Oktay et al.): the U-Net with additive attention gates on skips

Stages and strides come from the patch size (models/planning.py) unless given per stage.
All give deep-supervision outputs (one per decoder stage, full resolution first) when
`deep_supervision` is on; `model.deep_supervision = False` switches to the single full-resolution
output, e.g. for inference.

Usage:
    net = nnunet(patch_size=(80, 160, 160))
    outputs = net(x)        # list of logits when deep supervision is on, else one tensor
"""
from __future__ import annotations

import torch
from torch import nn

from models.decoder import Decoder
from models.encoder import Encoder
from models.planning import check_patch_divisible, plan_stages


class SegmentationNetwork(nn.Module):
    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, on: bool) -> None:
        self.decoder.deep_supervision = bool(on)

    @property
    def routes_by_group(self) -> bool:
        """True when a dMoE layer needs each sample's group: call net(x, groups=...)."""
        return any(m.router_kind == "group" for m in self.encoder.moe.values())

    def moe_aux_loss(self) -> torch.Tensor:
        """Sum of the dMoE layers' load-balancing losses from the last forward (0 without dMoE)."""
        losses = [m.aux_loss for m in self.encoder.moe.values()]
        return sum(losses) if losses else torch.zeros(())

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None):
        outputs = self.decoder(self.encoder(x, groups))
        return outputs if self.deep_supervision else outputs[0]


def init_weights(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's init: Kaiming normal (a = 0.01) for conv weights, zero biases."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _stages(patch_size, base_features, max_features, max_stages, kernel_size, features, strides, kernel_sizes):
    plan = plan_stages(patch_size, base_features=base_features, max_features=max_features,
                       max_stages=max_stages, kernel_size=kernel_size)
    features = tuple(features) if features is not None else plan.features
    strides = tuple(tuple(s) for s in strides) if strides is not None else plan.strides
    kernel_sizes = kernel_sizes if kernel_sizes is not None else [kernel_size] * len(features)
    if len(strides) != len(features):
        raise ValueError(f"{len(features)} stage features but {len(strides)} strides")
    check_patch_divisible(patch_size, strides)
    return features, strides, kernel_sizes


def _stage_convs(n_convs, first_stage_convs: int | None, n_stages: int):
    """Convolutions per stage: n_convs (one number or one per stage), the full-resolution stage's
    replaced by first_stage_convs when given. A count for the first stage alone, not a list, so it
    holds whatever number of stages the patch gives (the demo's fp32 fallback uses 1: at full
    resolution each convolution costs as much as all the coarser stages together)."""
    if first_stage_convs is None:
        return n_convs
    if int(first_stage_convs) < 1:
        raise ValueError(f"first_stage_convs must be 1 or more, got {first_stage_convs}")
    convs = list(n_convs) if isinstance(n_convs, (list, tuple)) else [n_convs] * n_stages
    return [int(first_stage_convs)] + convs[1:]


def _build(encoder: Encoder, num_classes: int, attention: bool, deep_supervision: bool) -> SegmentationNetwork:
    net = SegmentationNetwork(encoder, Decoder(encoder, num_classes, attention=attention,
                                               deep_supervision=deep_supervision))
    net.apply(init_weights)
    return net


def nnunet(*, patch_size, in_channels: int = 1, num_classes: int = 3, base_features: int = 32,
           max_features: int = 320, max_stages: int = 6, n_convs: int = 2, first_stage_convs: int | None = None,
           features=None, strides=None, kernel_sizes=None, norm: str = "instance", act: str = "leakyrelu",
           deep_supervision: bool = True) -> SegmentationNetwork:
    features, strides, kernels = _stages(patch_size, base_features, max_features, max_stages, 3, features,
                                         strides, kernel_sizes)
    n_convs = _stage_convs(n_convs, first_stage_convs, len(features))
    enc = Encoder(in_channels, features, strides, kernels, n_convs, downsample="conv", block="plain",
                  norm=norm, act=act)
    return _build(enc, num_classes, attention=False, deep_supervision=deep_supervision)


def unet(*, patch_size, in_channels: int = 1, num_classes: int = 3, base_features: int = 32,
         max_features: int = 320, max_stages: int = 5, n_convs: int = 2, first_stage_convs: int | None = None,
         features=None, strides=None, kernel_sizes=None, norm: str = "batch", act: str = "relu",
         deep_supervision: bool = True, attention: bool = False) -> SegmentationNetwork:
    features, strides, kernels = _stages(patch_size, base_features, max_features, max_stages, 3, features,
                                         strides, kernel_sizes)
    n_convs = _stage_convs(n_convs, first_stage_convs, len(features))
    enc = Encoder(in_channels, features, strides, kernels, n_convs, downsample="maxpool", block="plain",
                  norm=norm, act=act)
    return _build(enc, num_classes, attention=attention, deep_supervision=deep_supervision)


def attention_unet(*, patch_size, in_channels: int = 1, num_classes: int = 3, base_features: int = 32,
                   max_features: int = 320, max_stages: int = 5, n_convs: int = 2, first_stage_convs: int | None = None,
                   features=None, strides=None, kernel_sizes=None, norm: str = "batch", act: str = "relu",
                   deep_supervision: bool = True) -> SegmentationNetwork:
    return unet(patch_size=patch_size, in_channels=in_channels, num_classes=num_classes,
                base_features=base_features, max_features=max_features, max_stages=max_stages, n_convs=n_convs,
                first_stage_convs=first_stage_convs,
                features=features, strides=strides, kernel_sizes=kernel_sizes, norm=norm, act=act,
                deep_supervision=deep_supervision, attention=True)


def vnet(*, patch_size, in_channels: int = 1, num_classes: int = 3, base_features: int = 16,
         max_features: int = 256, max_stages: int = 5, n_convs=None, features=None, strides=None,
         kernel_sizes=None, norm: str = "batch", act: str = "prelu",
         deep_supervision: bool = True) -> SegmentationNetwork:
    features, strides, kernels = _stages(patch_size, base_features, max_features, max_stages, 5, features,
                                         strides, kernel_sizes)
    if n_convs is None:  # Milletari et al.: 1, 2, then 3 convs per stage
        n_convs = [min(i + 1, 3) for i in range(len(features))]
    enc = Encoder(in_channels, features, strides, kernels, n_convs, downsample="conv_down", block="residual",
                  norm=norm, act=act)
    return _build(enc, num_classes, attention=False, deep_supervision=deep_supervision)
