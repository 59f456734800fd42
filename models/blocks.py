"""The few building blocks every network of the project is made of.

    ConvNormAct      conv -> norm -> activation (the unit of all four networks)
    StackedConvs     n ConvNormAct, the first one optionally strided (nnU-Net / U-Net stages)
    ResidualStage    n ConvNormAct with the input added before the last activation (V-Net)
    AttentionGate    additive attention on a skip: x * sigmoid(psi(ReLU(W_x x + W_g g)))

Norms and activations are looked up by name in explicit registries so configs can choose them
and a misspelling lists the valid names.

Usage:
    block = StackedConvs(in_channels=1, out_channels=32, n_convs=2, kernel_size=3, first_stride=1,
                         norm="instance", act="leakyrelu")
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

NORMS = {
    "instance": lambda c: nn.InstanceNorm3d(c, eps=1e-5, affine=True),
    "batch": lambda c: nn.BatchNorm3d(c),
    "group": lambda c: nn.GroupNorm(min(8, c), c),
    "none": lambda c: nn.Identity(),
}
ACTIVATIONS = {
    "leakyrelu": lambda c: nn.LeakyReLU(negative_slope=0.01, inplace=True),
    "relu": lambda c: nn.ReLU(inplace=True),
    "prelu": lambda c: nn.PReLU(num_parameters=c),
    "elu": lambda c: nn.ELU(inplace=True),
}


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}")
    return registry[name]


def make_norm(name: str, channels: int) -> nn.Module:
    return _lookup(NORMS, name, "norm")(channels)


def make_act(name: str, channels: int) -> nn.Module:
    return _lookup(ACTIVATIONS, name, "activation")(channels)


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class ConvNormAct(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, norm: str = "instance",
                 act: str = "leakyrelu", bias: bool = True):
        super().__init__()
        kernel_size, stride = _triple(kernel_size), _triple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=tuple((k - 1) // 2 for k in kernel_size), bias=bias)
        self.norm = make_norm(norm, out_channels)
        self.act = make_act(act, out_channels)
        # torch 2.13's CPU bf16 conv3d returns non-finite weight gradients at random for kernels
        # above 3 (V-Net's 5x5x5: 3 of 6 first steps; none at 3x3x3, none on torch 2.14.1), so
        # those convolutions run in fp32 under CPU autocast (V-Net is no faster in bf16 there)
        self.fp32_on_cpu = max(kernel_size) > 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32_on_cpu and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.act(self.norm(self.conv(x.float())))
        return self.act(self.norm(self.conv(x)))


class StackedConvs(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 2, kernel_size=3, first_stride=1,
                 norm: str = "instance", act: str = "leakyrelu"):
        layers = [ConvNormAct(in_channels, out_channels, kernel_size, first_stride, norm, act)]
        layers += [ConvNormAct(out_channels, out_channels, kernel_size, 1, norm, act) for _ in range(n_convs - 1)]
        super().__init__(*layers)


class ResidualStage(nn.Module):
    """V-Net stage: convs whose output is added to the stage input, then activated."""

    def __init__(self, channels: int, n_convs: int, kernel_size=5, norm: str = "batch", act: str = "prelu",
                 in_channels: int | None = None):
        super().__init__()
        in_channels = in_channels or channels
        self.project = (nn.Identity() if in_channels == channels
                        else nn.Conv3d(in_channels, channels, kernel_size=1))
        convs = [ConvNormAct(in_channels, channels, kernel_size, 1, norm, act)]
        convs += [ConvNormAct(channels, channels, kernel_size, 1, norm, act) for _ in range(n_convs - 1)]
        # The last conv's activation comes after the residual add, as in Milletari et al.
        convs[-1].act = nn.Identity()
        self.convs = nn.Sequential(*convs)
        self.act = make_act(act, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.project(x))


class AttentionGate(nn.Module):
    """Oktay et al.'s additive gate: the coarser gating signal g decides which skip voxels pass."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.w_x = nn.Conv3d(skip_channels, inter, kernel_size=1, bias=False)
        self.w_g = nn.Conv3d(gate_channels, inter, kernel_size=1, bias=True)
        self.psi = nn.Conv3d(inter, 1, kernel_size=1, bias=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.w_g(g)
        if g.shape[2:] != x.shape[2:]:
            g = F.interpolate(g, size=x.shape[2:], mode="trilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.w_x(x) + g)))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)
