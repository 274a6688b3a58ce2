"""Public models: `EpsilonVAE` (diffusion decoder) and `BaselineVAE` (deterministic decoder).

Both share the encoder, the input checks and the safetensors + JSON export format.
Images are float tensors in [-1, 1] of shape (N, C, H, W); H and W must be multiples
of the encoder's downsample factor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from . import decoding, flow
from .config import AutoencoderConfig, ConfigError, apply_overrides, from_dict, to_dict
from .nn.autoencoder import Encoder, VAEDecoder
from .nn.discriminator import Discriminator
from .nn.pixel_dit import PixelDiT
from .nn.unet import UNet
from .rundir import RunIOError, atomic_write, describe, write_text
from .tiling import TileConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class EpsilonOutput(NamedTuple):
    """Everything one ε-VAE training step needs, from one forward call."""

    z: torch.Tensor  # (N, Cz, h, w) latent (sampled if the posterior is Gaussian)
    t: torch.Tensor  # (N,) flow time
    x_t: torch.Tensor  # (N, C, H, W) noisy input
    v_pred: torch.Tensor  # (N, C, H, W) predicted velocity
    v_target: torch.Tensor  # (N, C, H, W) true velocity ε - γ x0
    x0_hat: torch.Tensor  # (N, C, H, W) one-step estimate of x0
    kl: torch.Tensor  # () KL to N(0, I) per latent element, 0 without a Gaussian posterior


class VAEOutput(NamedTuple):
    z: torch.Tensor
    x_hat: torch.Tensor  # (N, C, H, W) reconstruction
    kl: torch.Tensor


class Autoencoder(nn.Module):
    """What ε-VAE and the VAE share: the encoder, checks, presets and (de)serialisation."""

    kind: ClassVar[str] = ""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if config.kind != self.kind:
            raise ConfigError(
                f"{type(self).__name__} needs a config of kind {self.kind!r}, got {config.kind!r}; "
                f"use {_CLASS_FOR_KIND[config.kind].__name__} (or epsvae.load_pretrained) instead"
            )
        self.config = config
        self.encoder = Encoder(config.encoder, config.image_channels)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(cls, name: str, overrides: dict[str, Any] | list[str] | None = None):
        """Build a randomly initialised model from a preset name, e.g. 'eps-lite-B'."""
        from .presets import model_config

        config = model_config(name)
        if overrides:
            config = apply_overrides(config, overrides)
        return cls(config)

    @property
    def downsample(self) -> int:
        return self.config.encoder.downsample

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ encoding

    def _check_images(self, x: torch.Tensor) -> None:
        c = self.config.image_channels
        f = self.downsample
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images of shape (N, {c}, H, W), got {shape}")
        if x.shape[1] != c:
            raise ValueError(f"expected {c} image channel(s), got images of shape {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"image height and width must be divisible by the downsample factor {f}, got {x.shape[2]}x{x.shape[3]}"
            )

    def _check_latents(self, z: torch.Tensor) -> None:
        c = self.config.encoder.latent_channels
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != c:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"expected latents of shape (N, {c}, h, w), got {shape}")
        if self.config.decoder.padding_mode == "reflect":  # F.pad's reflect needs 2+ px at every level
            per_latent = self.downsample / self.decoder.downsample if self.kind == "epsilon" else 1
            if min(z.shape[-2:]) * per_latent < 2:
                need = math.ceil(2 / per_latent)
                raise ValueError(
                    f"this decoder pads by reflection, which needs latents of at least {need}x{need} "
                    f"(its smallest feature map 2x2), got {z.shape[-2]}x{z.shape[-1]}"
                )

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, C, H, W) -> (mean, logvar), each (N, Cz, H/f, W/f); logvar is None without a Gaussian posterior."""
        self._check_images(x)
        h = self.encoder(x.to(device=self.device, dtype=self.dtype))
        if not self.config.encoder.gaussian:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """x in [-1, 1], (N, C, H, W) -> z (N, Cz, H/f, W/f). A Gaussian posterior gives its mean unless `sample`."""
        if not sample:
            return self.encode_posterior(x)[0]
        return self._posterior_sample(x, generator)[0]

    def _posterior_sample(
        self, x: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ):
        """(z, kl) for training: a posterior sample and its KL to N(0, I), averaged over elements."""
        mean, logvar = self.encode_posterior(x)
        if logvar is None:
            return mean, mean.new_zeros(())
        eps = noise.to(mean) if noise is not None else randn_like(mean, generator)
        z = mean + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
        return z, kl

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """All the randomness of a training forward over `n` images of `size` (H, W), drawn from
        `generator` in the order `forward` draws it, as keyword arguments for `forward`.

        The training loop draws once for the whole global batch and gives each process and
        micro-batch its slice: the numbers a sample gets do not depend on how the batch is split."""
        out: dict[str, torch.Tensor] = {}
        device = generator.device
        if self.config.encoder.gaussian:
            f, cz = self.downsample, self.config.encoder.latent_channels
            shape = (n, cz, size[0] // f, size[1] // f)
            out["posterior_noise"] = torch.randn(shape, generator=generator, device=device)
        return out

    # ------------------------------------------------------------------ parameters and files

    def num_parameters(self) -> dict[str, int]:
        """Exact parameter counts: encoder, decoder and (built from the config) discriminator."""
        disc = Discriminator(self.config.discriminator, self.config.image_channels)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": count(self.encoder), "decoder": count(self.decoder), "discriminator": count(disc)}

    def save_pretrained(self, directory: str | Path, **meta: Any) -> Path:
        """Write `config.json` and `model.safetensors` (no pickle) into `directory`; `meta` (e.g. the
        training step) goes into config.json as `_key`s."""
        return write_pretrained(directory, self, to_dict(self.config), **meta)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Load a directory written by `save_pretrained` (or `epsvae export`)."""
        config = read_config(directory)
        if cls is not Autoencoder and config.kind != cls.kind:
            other = _CLASS_FOR_KIND[config.kind].__name__
            raise ConfigError(
                f"{directory} holds a {other} (kind {config.kind!r}), not a {cls.__name__}; "
                f"load it with {other}.from_pretrained or epsvae.load_pretrained"
            )
        model = _CLASS_FOR_KIND[config.kind](config)
        model.load_weights(Path(directory) / WEIGHTS_NAME)
        return model.to(device).eval()

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors state dict, with a readable error if it belongs to another config."""
        load_weights(self, path)

    # ------------------------------------------------------------------ latent statistics

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean and std (Cz,) recorded by `epsvae encode-dataset`."""
        cfg = self.config
        if cfg.latent_mean is None or cfg.latent_std is None:
            raise ValueError(
                "this autoencoder's config has no latent statistics; run `epsvae encode-dataset --model DIR ...` "
                "once on its training data (it records them in DIR/config.json)"
            )
        device = next(self.parameters()).device
        return torch.tensor(cfg.latent_mean, device=device), torch.tensor(cfg.latent_std, device=device)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z -> (z - mean) / std per channel: what a latent generator models."""
        mean, std = self.latent_stats()
        return (z - mean.reshape(1, -1, 1, 1).to(z.dtype)) / std.reshape(1, -1, 1, 1).to(z.dtype)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize_latents`: a generator's output -> latents `decode` takes."""
        mean, std = self.latent_stats()
        return z * std.reshape(1, -1, 1, 1).to(z.dtype) + mean.reshape(1, -1, 1, 1).to(z.dtype)


class EpsilonVAE(Autoencoder):
    """ε-VAE: conv encoder + ADM U-Net that denoises x_t to the image, conditioned on z."""

    kind = "epsilon"

    def __init__(self, config: AutoencoderConfig):
        super().__init__(config)
        c = config.image_channels
        decoder = PixelDiT if config.decoder.arch == "dit" else UNet
        self.decoder = decoder(config.decoder, in_channels=c + config.encoder.latent_channels, out_channels=c)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Velocity for x_t (N, C, H, W) at times t (N,) given latents z; x_t is rescaled to unit variance.
        With `flow.prediction='x0'` the network's output is the clean image, converted to v here."""
        fc = self.config.flow
        scale = flow.input_scale(t, fc.gamma).reshape(-1, 1, 1, 1).to(x_t.dtype)
        return flow.output_to_velocity(self.decoder(x_t * scale, t, z), x_t, t, fc.gamma, fc.prediction, fc.t_min)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight (VQGAN's adaptive adversarial weight compares gradients here)."""
        return self.decoder.output_layer.weight

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Training times (N,) from the config's sampler and its uniform / grid-point mixtures."""
        fc = self.config.flow
        points = decoding.resolve_grid(fc, None, None)[:-1] if fc.t_grid_mix else None
        return flow.sample_t_mixed(
            fc.t_sampler, n, fc.t_mean, fc.t_std, fc.t_uniform_mix, points, fc.t_grid_mix, generator, device
        )

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = super().draw(n, size, generator)
        device = generator.device
        out["t"] = self.sample_t(n, generator, device)
        shape = (n, self.config.image_channels, *size)
        out["noise"] = torch.randn(shape, generator=generator, device=device)
        return out

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        posterior_noise: torch.Tensor | None = None,
    ) -> EpsilonOutput:
        """One training forward: encode, noise x to a random t, predict the velocity, estimate x0.

        Randomness not given (t, noise, posterior_noise) is drawn from `generator`."""
        fc = self.config.flow
        z, kl = self._posterior_sample(x, generator, posterior_noise)
        n = x.shape[0]
        if t is None:
            device = generator.device if generator is not None else x.device
            t = self.sample_t(n, generator, device)
        t = t.to(x.device)
        noise = randn_like(x, generator) if noise is None else noise.to(x)
        x_t = flow.interpolate(x, noise, t, fc.gamma)
        v_pred = self.velocity(x_t, t, z)
        x0_hat = flow.x0_estimate(x_t, t, v_pred, fc.gamma)
        return EpsilonOutput(z, t, x_t, v_pred, flow.velocity_target(x, noise, fc.gamma), x0_hat, kl)

    def decode(
        self,
        z: torch.Tensor,
        steps: int | None = None,
        grid: str | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "euler",
        noise: torch.Tensor | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        tiling: TileConfig | None = None,
        batch_size: int | None = None,
        grad: bool = False,
    ) -> torch.Tensor:
        """Latents (N, Cz, h, w) -> images (N, C, h*f, w*f), about [-1, 1], in `steps` network calls.

        `grid` is 'reversed-log' (default from the config), 'uniform', 'matched' (the
        uniform grid moved by the training t's shift, flow.t_mean), or a decreasing
        tensor of times from 1 down to 0. Decoding starts from Gaussian noise, so it
        is stochastic: pass a seeded `generator` (or `noise`) to make it reproducible.

        Large images: `tile_size` (pixels, with `tile_overlap` of context, default the
        exact receptive margin) or a full `tiling` evaluates each network call tile by
        tile over one global noise canvas (see epsvae.tiling). Large batches:
        `batch_size` decodes that many images at a time with the same noise as all at
        once. `grad=True` keeps the autograd graph (guidance, editing). `z` is cast to
        the model's dtype and device; low-precision models keep the sampler state in float32.
        """
        self._check_latents(z)
        ts = decoding.resolve_grid(self.config.flow, steps, grid)
        if tiling is None and tile_size is not None:
            tiling = TileConfig(size=tile_size, overlap=tile_overlap)
        return decoding.decode(self, z, ts, generator, sampler, noise, tiling, batch_size, grad)


class BaselineVAE(Autoencoder):
    """The same-size deterministic-decoder autoencoder that ε-VAE is compared against."""

    kind = "vae"

    def __init__(self, config: AutoencoderConfig):
        super().__init__(config)
        self.decoder = VAEDecoder(config.decoder, config.encoder.latent_channels, config.image_channels)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, posterior_noise: torch.Tensor | None = None
    ) -> VAEOutput:
        z, kl = self._posterior_sample(x, generator, posterior_noise)
        return VAEOutput(z, self.decoder(z), kl)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight (VQGAN's adaptive adversarial weight compares gradients here)."""
        return self.decoder.layers[-1].weight

    def decode(self, z: torch.Tensor, **_ignored: Any) -> torch.Tensor:
        """Latents (N, Cz, h, w) -> images (N, C, h*f, w*f). Step/grid arguments are accepted and ignored."""
        self._check_latents(z)
        return self.decoder(z.to(device=self.device, dtype=self.dtype))


_CLASS_FOR_KIND: dict[str, type[Autoencoder]] = {"epsilon": EpsilonVAE, "vae": BaselineVAE}


def build_model(config: AutoencoderConfig) -> Autoencoder:
    return _CLASS_FOR_KIND[config.kind](config)


def build_discriminator(config: AutoencoderConfig) -> Discriminator:
    return Discriminator(config.discriminator, config.image_channels)


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """Load an exported model directory as whichever class its config names."""
    return Autoencoder.from_pretrained(directory, device)


def read_config(directory: str | Path) -> AutoencoderConfig:
    data = read_json_config(directory)
    if data.get("_class_name", "EpsilonVAE") not in ("EpsilonVAE", "BaselineVAE"):
        raise ConfigError(f"{directory} holds a {data['_class_name']}, not an autoencoder")
    return from_dict(AutoencoderConfig, {k: v for k, v in data.items() if not k.startswith("_")}, complete=True)


def write_pretrained(directory: str | Path, module: nn.Module, config: dict[str, Any], **meta: Any) -> Path:
    """`config.json` (class name, version, `meta` as _keys, config) + `model.safetensors`, atomically."""
    from safetensors.torch import save

    from . import __version__

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunIOError(describe(exc, directory, "creating")) from None
    head = {"_class_name": type(module).__name__, "_epsvae_version": __version__}
    head.update({f"_{k}": v for k, v in meta.items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})  # one key: safetensors orders metadata at random
    # weights first, config last: a directory whose config.json is new has its new weights too
    atomic_write(directory / WEIGHTS_NAME, lambda f: f.write(blob))
    write_text(directory / CONFIG_NAME, json.dumps({**head, **config}, indent=2) + "\n")
    return directory


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a safetensors state dict into `module`, with a readable error if it belongs to another config."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    check_state_dict(module, state, source=str(path))
    module.load_state_dict(state)


def read_json_config(directory: str | Path) -> dict[str, Any]:
    """The raw config.json of a model directory (with its _meta keys), with readable errors."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an epsvae model directory: {CONFIG_NAME} is missing "
            "(write one with save_pretrained or `epsvae export`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a readable ValueError if `state` does not fit `model` (other config, other class)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match this model's config (was it saved from another config or preset?)"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                lines.append(f"  {len(items)} {label}: {', '.join(items[:3])}{more}")
        raise ValueError("\n".join(lines))


def randn_like(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise shaped like `like`, drawn on the generator's device (a CPU generator
    gives the same numbers whatever device the model is on), returned on `like`'s device."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


_atomic_write_text = write_text
