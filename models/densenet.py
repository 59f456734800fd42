"""A 3D DenseNet classifier (Huang et al.; DenseNet-121's layout, sizes from the config).

Dense layer: BN -> ReLU -> 1x1 conv (bn_size * growth) -> BN -> ReLU -> 3x3 conv (growth), its
output concatenated to its input; transitions halve the channels and the resolution. Global
average pooling and a linear layer give the class logits. DenseNet-121 is
block_config (6, 12, 24, 16), growth 32, 64 initial features; the default here is CPU-sized.

Usage:
    net = DenseNet3d(in_channels=4, num_classes=2, growth_rate=8, block_config=(2, 2, 2), init_features=16)
    logits = net(x)   # (B, num_classes)
"""
from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm3d(in_channels), nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, bn_size * growth_rate, kernel_size=1, bias=False),
            nn.BatchNorm3d(bn_size * growth_rate), nn.ReLU(inplace=True),
            nn.Conv3d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet3d(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, growth_rate: int = 8, block_config=(2, 2, 2),
                 init_features: int = 16, bn_size: int = 4):
        super().__init__()
        layers = [nn.Conv3d(in_channels, init_features, kernel_size=3, stride=2, padding=1, bias=False),
                  nn.BatchNorm3d(init_features), nn.ReLU(inplace=True)]
        channels = init_features
        for i, n_layers in enumerate(block_config):
            for _ in range(n_layers):
                layers.append(DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            if i < len(block_config) - 1:
                layers += [nn.BatchNorm3d(channels), nn.ReLU(inplace=True),
                           nn.Conv3d(channels, channels // 2, kernel_size=1, bias=False),
                           nn.AvgPool3d(kernel_size=2, stride=2, ceil_mode=True)]
                channels //= 2
        layers += [nn.BatchNorm3d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
