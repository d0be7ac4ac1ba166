"""A generative adversarial network: an MLP generator and an MLP discriminator in one module.

The generator maps noise ``z`` (B, noise_dim) to fake items (B, out_features); its last block
ends in a sigmoid for data in [0, 1] (layerscope's digits and MNIST pixels) or, with
``output=tanh``, in a tanh for data scaled to [-1, 1]. The discriminator maps an item to one
logit, "real" when positive; train both with ``nn.BCEWithLogitsLoss`` (its sigmoid lives in the
loss).

``forward(z)`` is the whole adversarial path, ``discriminator(generator(z))``: the logit the
discriminator gives to generated items, which is what the generator's loss reads. So
``example_input`` is a noise batch, and the Layers view walks every block in the order they
run: the generator's hidden layers, its output layer (the fake items), then the
discriminator's hidden layers. Draw samples with ``gan.generator(z)`` or ``gan.sample(n)``.
The reference data is sklearn's 8x8 digits (64 features; ``out_features=784`` for MNIST).

Example:
    >>> import torch
    >>> from layerscope.zoo.gan import GAN, GANConfig
    >>> gan = GAN(GANConfig(width=32, depth=2))
    >>> z = gan.example_input(batch_size=5)
    >>> fake = gan.generator(z)
    >>> z.shape, fake.shape, gan(z).shape     # gan(z) == gan.discriminator(fake)
    (torch.Size([5, 16]), torch.Size([5, 64]), torch.Size([5, 1]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from layerscope.errors import LayerscopeError

from .base import ZooModel, activation, check_choice, check_dropout, check_positive, norm1d


@dataclass
class GANConfig:
    out_features: int = 64         # size of a generated item (8x8 digits = 64)
    noise_dim: int = 16            # size of the noise vector z the generator reads
    width: int = 128               # units in every hidden layer of both networks
    depth: int = 2                 # hidden layers in each network
    activation: str = "leaky_relu"  # relu | gelu | tanh | silu | leaky_relu (slope 0.2)
    norm: str = "batch"            # none | batch | layer, in the generator's hidden layers
    dropout: float = 0.0           # in the discriminator's hidden layers
    residual: bool = False         # add each hidden layer's input to its output (sizes match)
    output: str = "sigmoid"        # sigmoid (items in [0, 1]) | tanh (items in [-1, 1])

    def __post_init__(self):
        check_positive(out_features=self.out_features, noise_dim=self.noise_dim,
                       width=self.width, depth=self.depth)
        check_choice("activation", self.activation, ("relu", "gelu", "tanh", "silu", "leaky_relu"))
        check_choice("norm", self.norm, ("none", "batch", "layer"))
        check_dropout(self.dropout)
        check_choice("output", self.output, ("sigmoid", "tanh"))


class Dense(nn.Module):
    """Linear map, normalisation, activation, dropout; plus the input when ``residual``."""

    def __init__(self, n_in: int, n_out: int, config: GANConfig, norm: str, dropout: float,
                 act: nn.Module | None = None, residual: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = norm1d(norm, n_out)
        self.act = activation(config.activation) if act is None else act
        self.dropout = nn.Dropout(dropout)
        self.residual = residual and config.residual and n_in == n_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.dropout(self.act(self.norm(self.linear(x))))  # (B, n_in) -> (B, n_out)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


def _stack(n_in: int, config: GANConfig, norm: str, dropout: float) -> nn.ModuleList:
    sizes = [n_in] + [config.width] * config.depth
    return nn.ModuleList(Dense(a, b, config, norm, dropout) for a, b in zip(sizes[:-1], sizes[1:]))


class Generator(nn.Module):
    """Noise (B, noise_dim) -> hidden layers -> output layer (linear, sigmoid or tanh).

    The output layer is the last of ``blocks``, so the Layers view sees the generated items.
    """

    def __init__(self, config: GANConfig):
        super().__init__()
        self.blocks = _stack(config.noise_dim, config, config.norm, 0.0)
        self.blocks.append(Dense(config.width, config.out_features, config, "none", 0.0,
                                 act=nn.Sigmoid() if config.output == "sigmoid" else nn.Tanh(),
                                 residual=False))

    def forward(self, z: Tensor) -> Tensor:
        for block in self.blocks:
            z = block(z)                 # (B, width), then (B, out_features) in the data range
        return z


class Discriminator(nn.Module):
    """Items (B, ...) -> flattened -> hidden ``blocks`` -> ``head``: one real/fake logit (B, 1)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.out_features = config.out_features
        self.flatten = nn.Flatten()
        self.blocks = _stack(config.out_features, config, "none", config.dropout)
        self.head = nn.Linear(config.width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)              # (B, ...) -> (B, out_features)
        if x.shape[1] != self.out_features:
            raise LayerscopeError(
                f"the GAN's discriminator takes {self.out_features} features per item; got "
                f"{tuple(x.shape)} (flattened); set out_features={x.shape[1]} to fit this data")
        for block in self.blocks:
            x = block(x)                 # (B, width)
        return self.head(x)              # (B, 1) logit; sigmoid is in BCEWithLogitsLoss


class GAN(ZooModel):
    """``generator`` and ``discriminator``; ``gan(z)`` = ``discriminator(generator(z))``."""

    task = "gan"

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    @property
    def input_shape(self) -> tuple:
        return (self.config.noise_dim,)   # forward reads noise, not data

    @property
    def layerscope_blocks(self) -> str:
        """Every block in the order ``forward`` runs them: generator's, then discriminator's."""
        return ",".join(f"{part}.blocks.{i}" for part in ("generator", "discriminator")
                        for i in range(len(getattr(self, part).blocks)))

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.config.noise_dim:
            raise LayerscopeError(
                f"the GAN reads noise of shape (batch, {self.config.noise_dim}) (its forward is "
                f"discriminator(generator(z))); got {tuple(z.shape)}; to score data call "
                f"gan.discriminator(x)")
        fake = self.generator(z)          # (B, noise_dim) -> (B, out_features)
        return self.discriminator(fake)   # (B, 1) logit

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` generated items (n, out_features), drawn from standard normal noise.

        In training mode batch norm uses (and updates) the batch statistics, as in training;
        call ``gan.eval()`` first to sample with the running statistics.
        """
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.noise_dim, generator=generator, device=device)
        return self.generator(z)
