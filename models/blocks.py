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

class _InstanceNormFunction(torch.autograd.Function):
    """Instance norm with an affine map, forward and backward in whatever memory format x has: on a
    channels-last 3D tensor torch's instance norm goes through a contiguous copy and returns a
    contiguous tensor, which the next channels-last convolution copies back (about 0.3 s of a 1.1 s
    fp32 step at the demo's patch on one core)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        rstd = torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
        xhat = centred * rstd
        shape = (1, -1) + (1,) * (x.dim() - 2)
        ctx.save_for_backward(xhat, rstd, weight)
        return torch.addcmul(bias.view(shape), xhat, weight.view(shape))

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        dims = tuple(range(2, grad.dim()))
        shape = (1, -1) + (1,) * (grad.dim() - 2)
        n = xhat[0, 0].numel()
        grad_weight = (grad * xhat).sum(dim=dims)                       # (N, C)
        grad_bias = grad.sum(dim=dims)
        tail = (1,) * len(dims)
        # d x = rstd * w * (g - mean(g) - xhat * mean(g * xhat))
        grad_x = grad - (grad_bias / n).view(*grad_bias.shape, *tail) - xhat * (grad_weight / n).view(*grad_weight.shape, *tail)
        return grad_x * (rstd * weight.view(shape)), grad_weight.sum(0), grad_bias.sum(0), None


class InstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d(affine) (the same weights and state dict) that keeps a channels-last input
    channels-last in fp32 (_InstanceNormFunction); under autocast, and for a contiguous input,
    torch's own (the bf16 path of a CPU with native bf16 is exactly what it was)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 5 and x.dtype == torch.float32 and self.affine and not self.track_running_stats
                and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
                and not torch.is_autocast_enabled(x.device.type)):
            return _InstanceNormFunction.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


NORMS = {
    "instance": lambda c: InstanceNorm3d(c, eps=1e-5, affine=True),
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
