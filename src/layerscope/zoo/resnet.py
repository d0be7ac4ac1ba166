"""A small ResNet: a conv stem, stages of residual blocks, global average pooling, a classifier.

Each block computes ``act(F(x) + shortcut(x))`` with ``F`` = conv, norm, act, conv, norm. The
shortcut is the identity, or a strided ``1 x 1`` convolution with a norm where a stage changes
the channels or halves the side. ``residual=false`` drops every shortcut, leaving the same
convolutions as a plain network, the comparison that motivated skip connections. The reference
task is MNIST, ``(1, 28, 28)`` images in 10 classes.

Example:
    >>> import torch
    >>> from layerscope.zoo.resnet import ResNet, ResNetConfig
    >>> net = ResNet(ResNetConfig(width=8, depth=2, blocks=2))   # 2 stages of 2 blocks
    >>> net.config.channels, len(net.blocks), net(torch.randn(2, 1, 28, 28)).shape
    ([8, 16], 4, torch.Size([2, 10]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from .base import (ZooModel, activation, check_choice, check_dropout, check_positive, norm2d,
                   widths)


@dataclass
class ResNetConfig:
    in_channels: int = 1           # 1 for grey images, 3 for colour
    image_size: int = 28           # height = width of the input images
    n_classes: int = 10            # logits out
    width: int = 16                # channels of the first stage; each next stage doubles them
    depth: int = 3                 # stages; each after the first halves the image side
    blocks: int = 1                # residual blocks per stage
    channels: list[int] = field(default_factory=list)  # per-stage channels, e.g. 16x32x32;
                                   # when given it sets width and depth
    activation: str = "relu"       # relu | gelu | tanh | silu | leaky_relu
    norm: str = "batch"            # none | batch | layer (GroupNorm with one group)
    dropout: float = 0.0           # before the head
    residual: bool = True          # skip connections on or off

    def __post_init__(self):
        check_positive(in_channels=self.in_channels, image_size=self.image_size,
                       n_classes=self.n_classes, width=self.width, depth=self.depth,
                       blocks=self.blocks, channels=self.channels)
        self.channels, self.width, self.depth = widths(self.channels, self.width, self.depth, 2)
        check_choice("activation", self.activation, ("relu", "gelu", "tanh", "silu", "leaky_relu"))
        check_choice("norm", self.norm, ("none", "batch", "layer"))
        check_dropout(self.dropout)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection around them (the first may stride by 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, config: ResNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm2d(config.norm, c_out)
        self.act1 = activation(config.activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm2d(config.norm, c_out)
        self.act2 = activation(config.activation)
        if not config.residual:
            self.shortcut = None
        elif stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          norm2d(config.norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.norm1(self.conv1(x)))  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        y = self.norm2(self.conv2(y))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act2(y)


class ResNet(ZooModel):
    """``stem``, residual ``blocks`` (stage after stage), pooled linear ``head``."""

    task = "classification"

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        c0 = config.channels[0]
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, c0, 3, padding=1, bias=False),
                                  norm2d(config.norm, c0), activation(config.activation))
        blocks, c_in = [], c0
        for stage, c_out in enumerate(config.channels):
            for i in range(config.blocks):
                stride = 2 if stage > 0 and i == 0 else 1   # each later stage halves the side
                blocks.append(ResidualBlock(c_in, c_out, stride, config))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, C, h, w) -> (B, C)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.n_classes)

    @property
    def input_shape(self) -> tuple:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def forward(self, x: Tensor) -> Tensor:
        self._check_item_shape(x, self.input_shape, "the ResNet")
        x = self.stem(x)                          # (B, channels[0], H, W)
        for block in self.blocks:
            x = block(x)
        return self.head(self.dropout(self.pool(x)))  # (B, n_classes) logits
