"""The classic CNNs NiN replaces, as d2l's chapters define them: LeNet, AlexNet, VGG-11.

Each builder takes the input side length: d2l sizes the first fully connected layer for its own
input (LeNet 28, AlexNet and VGG 224; `LazyLinear` in d2l 1.0), so the head here is sized for
`resize` the same way. At d2l's sizes the layers and parameter counts are d2l's exactly.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["alexnet", "lenet", "vgg11", "vgg_block"]


def _flat_size(features: nn.Sequential, resize: int, in_channels: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, resize, resize)).numel()


def lenet(resize: int = 28, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (d2l 7.6): two sigmoid conv layers with average pooling, then three dense layers."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
    )  # fmt: skip
    return nn.Sequential(
        *features,
        nn.Flatten(),
        nn.Linear(_flat_size(features, resize, in_channels), 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )  # fmt: skip


def alexnet(resize: int = 224, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """AlexNet (d2l 8.1): five conv layers, then two 4096-wide dense layers."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
    )  # fmt: skip
    return nn.Sequential(*features, *_dense_head(_flat_size(features, resize, in_channels), num_classes))


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """d2l's VGG block: `num_convs` padded 3x3 conv layers, then a 2x2 max-pool that halves the size."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2))


VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))  # (convs, channels) per block


def vgg11(resize: int = 224, ratio: int = 1, in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """VGG-11 (d2l 8.2). d2l trains it with every block's channels divided by `ratio` = 4 (the dense
    head stays 4096 wide): the full network costs 7.6 GMAC per 224x224 image."""
    blocks, channels = [], in_channels
    for num_convs, out_channels in VGG11:
        blocks.append(vgg_block(num_convs, channels, out_channels // ratio))
        channels = out_channels // ratio
    features = nn.Sequential(*blocks)
    return nn.Sequential(*blocks, *_dense_head(_flat_size(features, resize, in_channels), num_classes))


def _dense_head(in_features: int, num_classes: int) -> list[nn.Module]:
    """AlexNet's and VGG's classifier: two 4096-wide dense layers with dropout, then one output per class."""
    return [
        nn.Flatten(),
        nn.Linear(in_features, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    ]  # fmt: skip
