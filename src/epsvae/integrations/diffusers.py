"""`AutoencoderEps`: an ε-VAE (or the baseline VAE) as a diffusers model, usable as the
`vae` of diffusers pipelines (DiTPipeline, StableDiffusionPipeline, ...).

A thin adapter in the manner of diffusers' own `ConsistencyDecoderVAE`: it holds the plain
epsvae model as `self.model` and speaks diffusers' interface around it:

    encode(x).latent_dist          DiagonalGaussianDistribution: sample(generator), mode()
    decode(z, generator=..., num_inference_steps=...).sample   (a tuple with return_dict=False)
    config.scaling_factor, config.shift_factor                 from the latent statistics
    enable_tiling() / disable_tiling() / enable_slicing() / disable_slicing()
    save_pretrained / from_pretrained(dir, torch_dtype=...)    diffusers' directory format

Latent scaling. Pipelines scale latents by scalars: `z * scaling_factor` after encoding
(SD), `(z - shift_factor) * scaling_factor` (SD3, Flux), and decode `z / scaling_factor`
(+ shift_factor). epsvae records per-channel statistics; the scalars here are their pooled
values over channels: shift_factor = the mean of the channel means, scaling_factor = 1 /
the pooled standard deviation about it. Without recorded statistics they are 1 and 0.
Per-channel normalisation stays available as `model.normalize_latents`.

Requires `pip install epsvae[diffusers]`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from ..config import AutoencoderConfig, from_dict, to_dict
from ..models import Autoencoder, EpsilonVAE, build_model, load_pretrained, read_json_config
from ..tiling import TileConfig


def pooled_scaling(mean: list[float] | None, std: list[float] | None) -> tuple[float, float]:
    """(scaling_factor, shift_factor) from per-channel latent statistics: 1 / the pooled std
    about the mean of the channel means, and that mean. (1, 0) without statistics."""
    if mean is None or std is None:
        return 1.0, 0.0
    shift = sum(mean) / len(mean)
    var = sum(s**2 + (m - shift) ** 2 for m, s in zip(mean, std, strict=True)) / len(mean)
    return 1.0 / math.sqrt(var), shift


class AutoencoderEps(ModelMixin, ConfigMixin):
    """An epsvae autoencoder behind diffusers' VAE interface. Config keys are epsvae's
    `AutoencoderConfig` fields plus the scalars and derived sizes pipelines read."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        kind: str = "epsilon",
        image_channels: int = 3,
        image_size: int = 128,
        encoder: dict | None = None,
        decoder: dict | None = None,
        discriminator: dict | None = None,
        flow: dict | None = None,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        # what pipelines read from an AutoencoderKL (2 ** (len(block_out_channels) - 1) is the downsampling);
        # recomputed from the fields above, accepted when loading
        block_out_channels: list[int] | None = None,
        latent_channels: int | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        sample_size: int | None = None,
        force_upcast: bool | None = None,
    ):
        super().__init__()
        fields = {"kind": kind, "image_channels": image_channels, "image_size": image_size,
                  "encoder": encoder or {}, "decoder": decoder or {}, "discriminator": discriminator or {},
                  "flow": flow or {}, "latent_mean": latent_mean, "latent_std": latent_std}  # fmt: skip
        self.model = build_model(from_dict(AutoencoderConfig, fields))
        cfg = self.model.config
        scale, shift = pooled_scaling(latent_mean, latent_std)
        enc = cfg.encoder
        self.register_to_config(
            scaling_factor=scale if scaling_factor is None else scaling_factor,
            shift_factor=shift if shift_factor is None else shift_factor,
            block_out_channels=[enc.channels * m for m in enc.channel_mult],
            latent_channels=enc.latent_channels,
            in_channels=image_channels,
            out_channels=image_channels,
            sample_size=image_size,
            force_upcast=False,  # fp16 decoding refuses an overflow itself (EpsilonVAE.decode)
        )
        self.use_tiling = False
        self.use_slicing = False
        self.tiling = TileConfig()

    # ------------------------------------------------------------------ conversion with epsvae's format

    @classmethod
    def from_epsvae(cls, model: Autoencoder | str | Path) -> AutoencoderEps:
        """Wrap an epsvae model (or load an exported directory); the weights are copied bitwise."""
        if not isinstance(model, Autoencoder):
            model = load_pretrained(model)
        out = cls(**to_dict(model.config))
        out.model.load_state_dict(model.state_dict())
        out.model.to(device=model.device, dtype=model.dtype)  # the inner module: ModelMixin.to warns on dtypes
        return out.eval()

    def to_epsvae(self) -> Autoencoder:
        """The plain epsvae model inside (shares the weights); `.save_pretrained(dir)` writes epsvae's format."""
        return self.model

    # ------------------------------------------------------------------ diffusers' VAE interface

    def enable_tiling(self, tile_size: int | None = None, tile_overlap: int | None = None, **options: Any) -> None:
        """Decode tile by tile (see epsvae.tiling); `options` are further `TileConfig` fields."""
        self.use_tiling = True
        size = {} if tile_size is None else {"size": tile_size}
        self.tiling = TileConfig(**size, overlap=tile_overlap, **options)

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode and decode one image at a time (same results, peak memory of batch 1)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images in [-1, 1] (N, C, H, W) -> AutoencoderKLOutput(latent_dist) (or a 1-tuple)."""
        parts = x.split(1) if self.use_slicing else [x]
        moments = []
        for part in parts:
            mean, logvar = self.model.encode_posterior(part)
            moments.append(torch.cat([mean, torch.zeros_like(mean) if logvar is None else logvar], dim=1))
        dist = DiagonalGaussianDistribution(torch.cat(moments), deterministic=not self.model.config.encoder.gaussian)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        **kwargs: Any,
    ):
        """Latents (N, Cz, h, w) -> DecoderOutput(sample=images in about [-1, 1]) (or a 1-tuple).

        ε-VAE decoding starts from noise drawn from `generator`; `num_inference_steps`
        defaults to the model's configured steps. Further keywords go to `EpsilonVAE.decode`
        (grid, sampler, noise, grad, ...)."""
        if isinstance(generator, list):  # pipelines may pass one generator per image; the canvas is shared
            generator = generator[0]
        if isinstance(self.model, EpsilonVAE):
            kwargs.setdefault("tiling", self.tiling if self.use_tiling else None)
            kwargs.setdefault("batch_size", 1 if self.use_slicing else None)
            kwargs.setdefault("grad", torch.is_grad_enabled())
        sample = self.model.decode(z, steps=num_inference_steps, generator=generator, **kwargs)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ):
        """Encode and decode, like `AutoencoderKL.forward`."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict, generator=generator)


# --------------------------------------------------------------------------- the CLI's conversions


def export(source: str | Path, out: str | Path, fmt: str = "diffusers") -> Path:
    """`epsvae export SOURCE --out OUT --format FMT`: SOURCE is a training run, an epsvae model
    directory or a diffusers `AutoencoderEps` directory; FMT is 'diffusers' or 'epsvae'."""
    from .. import integrations

    if fmt not in ("diffusers", "epsvae"):
        raise ValueError(f"unknown export format {fmt!r}; use 'diffusers' or 'epsvae'")
    source = Path(source)
    if integrations.is_diffusers_dir(source):
        model = AutoencoderEps.from_pretrained(source).to_epsvae()
    elif read_json_config(source).get("_class_name") in ("EpsilonVAE", "BaselineVAE"):
        model = load_pretrained(source)
    else:  # a training run: its EMA weights, as `epsvae export` writes them
        import tempfile

        from ..train import export as export_run

        with tempfile.TemporaryDirectory() as tmp:
            model = load_pretrained(export_run(source, tmp))
    if fmt == "epsvae":
        return model.save_pretrained(out)
    AutoencoderEps.from_epsvae(model).save_pretrained(out)
    return Path(out)
