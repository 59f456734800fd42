"""The decoder, derived from an encoder: one stage per encoder stage but the deepest.

Each decoder stage upsamples the coarser features with a transposed conv whose kernel and stride
are the encoder stride of that level, optionally passes the skip through an attention gate
(gated by the coarser features), concatenates, and convolves. Every stage has a 1x1x1 head, so
deep supervision gets one output per decoder stage (full resolution first).

Usage:
    dec = Decoder(encoder, num_classes=3, attention=False, deep_supervision=True)
    outputs = dec(encoder(x))   # list, full resolution first; [full] when deep_supervision is off
"""
from __future__ import annotations

import torch
from torch import nn

from models.blocks import AttentionGate, ResidualStage, StackedConvs
from models.encoder import Encoder


class Decoder(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int, n_convs=None, attention: bool = False,
                 deep_supervision: bool = True):
        super().__init__()
        feats, strides = encoder.features, encoder.strides
        n_convs = n_convs if n_convs is not None else encoder.n_convs
        n_convs = list(n_convs) if isinstance(n_convs, (list, tuple)) else [n_convs] * len(feats)
        self.deep_supervision = deep_supervision
        ups, gates, blocks, heads = [], [], [], []
        for level in range(len(feats) - 2, -1, -1):  # from the deepest skip upwards
            coarse, fine, stride = feats[level + 1], feats[level], strides[level + 1]
            ups.append(nn.ConvTranspose3d(coarse, fine, kernel_size=stride, stride=stride, bias=False))
            gates.append(AttentionGate(fine, coarse) if attention else nn.Identity())
            kernel = encoder.kernel_sizes[level]
            if encoder.block == "residual":
                blocks.append(ResidualStage(fine, n_convs[level], kernel, encoder.norm, encoder.act,
                                            in_channels=2 * fine))
            else:
                blocks.append(StackedConvs(2 * fine, fine, n_convs[level], kernel, 1, encoder.norm, encoder.act))
            heads.append(nn.Conv3d(fine, num_classes, kernel_size=1))
        self.ups, self.gates = nn.ModuleList(ups), nn.ModuleList(gates)
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)
        self.attention = attention

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.blocks) - 1
        for i, (up, gate, block, head) in enumerate(zip(self.ups, self.gates, self.blocks, self.heads)):
            skip = skips[-(i + 2)]
            if self.attention:
                skip = gate(skip, x)
            x = block(torch.cat([up(x), skip], dim=1))
            if self.deep_supervision or i == last:
                outputs.append(head(x))
        return outputs[::-1]  # full resolution first
