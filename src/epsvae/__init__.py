"""epsvae: ε-VAE, an image autoencoder whose decoder is a conditional rectified-flow diffusion model.

>>> from epsvae import EpsilonVAE
>>> model = EpsilonVAE.from_preset("eps-fmnist")
>>> z = model.encode(x)                                   # x in [-1, 1], (N, C, H, W)
>>> x_hat = model.decode(z, steps=3, generator=torch.Generator().manual_seed(0))
"""

__version__ = "0.1.0"

from .config import (  # noqa: E402
    AutoencoderConfig,
    ConfigError,
    DecoderConfig,
    DiscriminatorConfig,
    DiTConfig,
    EncoderConfig,
    FlowConfig,
)
from .generation import LatentGenerator, generate  # noqa: E402
from .latents import encode_dataset  # noqa: E402
from .models import BaselineVAE, EpsilonVAE, build_model, load_pretrained  # noqa: E402
from .presets import preset_names  # noqa: E402

__all__ = [
    "AutoencoderConfig",
    "BaselineVAE",
    "ConfigError",
    "DecoderConfig",
    "DiTConfig",
    "DiscriminatorConfig",
    "EncoderConfig",
    "EpsilonVAE",
    "FlowConfig",
    "LatentGenerator",
    "build_model",
    "encode_dataset",
    "generate",
    "load_pretrained",
    "preset_names",
]
