"""A convolutional classifier: blocks of convolution, normalisation, activation, pooling, dropout.

Each block halves the image side with 2x2 pooling. With ``separable=True`` (the ``cnn-dw`` zoo
name) every convolution is depthwise-separable: a per-channel ``k x k`` convolution followed by
a ``1 x 1`` convolution that mixes channels, as in MobileNet. The reference task is MNIST
digits, ``(1, 28, 28)`` images in 10 classes.

Example:
    >>> import torch
    >>> from layerscope.zoo.cnn import CNN, CNNConfig
    >>> net = CNN(CNNConfig(width=8, depth=3, separable=True))
    >>> net.config.channels, net(torch.randn(3, 1, 28, 28)).shape
    ([8, 16, 32], torch.Size([3, 10]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .base import (ZooModel, activation, check_choice, check_dropout, check_positive, norm2d,
                   widths)


@dataclass
class CNNConfig:
    in_channels: int = 1           # 1 for grey images, 3 for colour
    image_size: int = 28           # height = width of the input images
    n_classes: int = 10            # logits out
    width: int = 32                # channels of the first conv block; each next block doubles
    depth: int = 2                 # conv blocks (each halves the image side)
    channels: list[int] = field(default_factory=list)  # per-block channels, e.g. 16x32x32;
                                   # when given it sets width and depth
    kernel_size: int = 3           # odd; padding keeps the side until the pooling
    hidden: int = 128              # units of the fully connected layer before the head
    activation: str = "relu"       # relu | gelu | tanh | silu | leaky_relu
    norm: str = "batch"            # none | batch | layer (layer = GroupNorm with one group)
    pool: str = "max"              # max | avg, 2x2 after every block
    dropout: float = 0.1           # after every block and before the head
    residual: bool = False         # add a shortcut (1x1 conv where channels change) around convs
    separable: bool = False        # depthwise-separable convolutions (the cnn-dw variant)

    def __post_init__(self):
        check_positive(in_channels=self.in_channels, image_size=self.image_size,
                       n_classes=self.n_classes, width=self.width, depth=self.depth,
                       channels=self.channels, kernel_size=self.kernel_size, hidden=self.hidden)
        self.channels, self.width, self.depth = widths(self.channels, self.width, self.depth, 2)
        if self.kernel_size % 2 == 0:
            raise LayerscopeError(f"kernel_size={self.kernel_size} must be odd, e.g. 3 or 5")
        if self.image_size >> len(self.channels) < 1:
            raise LayerscopeError(
                f"{len(self.channels)} pooling blocks shrink a {self.image_size}-pixel image to "
                f"nothing; use depth={self.image_size.bit_length() - 1} or less")
        check_choice("activation", self.activation, ("relu", "gelu", "tanh", "silu", "leaky_relu"))
        check_choice("norm", self.norm, ("none", "batch", "layer"))
        check_choice("pool", self.pool, ("max", "avg"))
        check_dropout(self.dropout)


class SeparableConv2d(nn.Module):
    """Depthwise ``k x k`` convolution per channel, then a pointwise ``1 x 1`` channel mix."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))  # (B, c_in, H, W) -> (B, c_out, H, W)


class ConvBlock(nn.Module):
    """conv -> norm -> activation (+ shortcut) -> 2x2 pool -> dropout."""

    def __init__(self, c_in: int, c_out: int, config: CNNConfig):
        super().__init__()
        k = config.kernel_size
        self.conv = SeparableConv2d(c_in, c_out, k) if config.separable \
            else nn.Conv2d(c_in, c_out, k, padding=k // 2)
        self.norm = norm2d(config.norm, c_out)
        self.act = activation(config.activation)
        if config.residual:
            self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        else:
            self.shortcut = None
        self.pool = nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.conv(x)))  # (B, c_in, H, W) -> (B, c_out, H, W)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.dropout(self.pool(y))      # (B, c_out, H/2, W/2)


class CNN(ZooModel):
    """Conv blocks in ``blocks``, a fully connected layer ``fc``, and the classifier ``head``."""

    task = "classification"

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        sizes = [config.in_channels] + list(config.channels)
        self.blocks = nn.ModuleList(ConvBlock(a, b, config) for a, b in zip(sizes[:-1], sizes[1:]))
        side = config.image_size >> len(config.channels)
        self.fc = nn.Sequential(
            nn.Flatten(),                                         # (B, C, s, s) -> (B, C*s*s)
            nn.Linear(config.channels[-1] * side * side, config.hidden),
            activation(config.activation),
            nn.Dropout(config.dropout),
        )
        self.head = nn.Linear(config.hidden, config.n_classes)

    @property
    def input_shape(self) -> tuple:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def forward(self, x: Tensor) -> Tensor:
        self._check_item_shape(x, self.input_shape, "the CNN")
        for block in self.blocks:
            x = block(x)             # (B, C_i, H/2^i, W/2^i)
        return self.head(self.fc(x))  # (B, n_classes) logits
