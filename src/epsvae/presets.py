"""Presets as data: one row per preset, applied as overrides on the config defaults.

Lite presets reproduce the paper's ImageNet-128 ablation models (lite encoder, f16c8);
SD presets pair the Stable Diffusion KL-VAE encoder (f8c4) with the ADM decoder at 256;
the Fashion-MNIST and photo pairs are sized for CPU training. Decoder sizes (PAPER.md section 2):
the attention placements below reproduce the paper's parameter counts within 0.1%.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import AutoencoderConfig, ConfigError, GeneratorRunConfig, RunConfig, TrainConfig, from_dict

# size -> U-Net (channels, res blocks, attention levels). Levels count from full
# resolution: at 128 px, level 2 is 32x32, level 3 16x16, level 4 8x8.
_SIZES: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "B": (64, 2, (2,)),
    "M": (96, 2, (3, 4)),
    "L": (128, 2, (2, 3, 4)),
    "XL": (128, 4, (2, 3, 4)),
    "H": (256, 2, (2, 3, 4)),
}

_LITE: dict[str, Any] = {"image_channels": 3, "image_size": 128}  # encoder defaults are the lite encoder
_SD_ENCODER: dict[str, Any] = {
    "channels": 128,
    "channel_mult": (1, 2, 4, 4),
    "num_res_blocks": 2,
    "extra_blocks": 2,
    "mid_attention": True,
    "downsample_conv": True,
    "out_kernel": 3,
    "latent_channels": 4,
}


def _decoder(size: str) -> dict[str, Any]:
    ch, blocks, attn = _SIZES[size]
    return {"channels": ch, "num_res_blocks": blocks, "attn_levels": attn}


PRESETS: dict[str, dict[str, Any]] = {}
for _size in _SIZES:
    PRESETS[f"eps-lite-{_size}"] = {**_LITE, "kind": "epsilon", "decoder": _decoder(_size)}
    PRESETS[f"vae-lite-{_size}"] = {**_LITE, "kind": "vae", "decoder": _decoder(_size)}
for _size in ("B", "M", "H"):
    PRESETS[f"eps-sd-{_size}"] = {
        "kind": "epsilon",
        "image_channels": 3,
        "image_size": 256,
        "encoder": _SD_ENCODER,
        "decoder": _decoder(_size),
    }
# ε-decoders for Stable Diffusion's VAE latents (f8, 4 channels, Gaussian posterior): train with
# `--frozen-encoder` pointing at a diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse)
for _size in ("B", "M"):
    PRESETS[f"eps-decoder-sd-{_size}"] = {**PRESETS[f"eps-sd-{_size}"], "encoder": {**_SD_ENCODER, "gaussian": True}}

# Fashion-MNIST (1 channel, 28x28 padded to 32x32), f4 with 2 latent channels: 8x8x2
# latents, 8x compression. Same encoder for both; the ε-VAE decoder has ~2x the VAE
# decoder's parameters, as in the paper (1.37M vs 0.70M).
_FMNIST_ENCODER = {
    "channels": 32,
    "channel_mult": (1, 2, 2),
    "num_res_blocks": 1,
    "extra_blocks": 1,
    "latent_channels": 2,
}
# The discriminator ends in the StyleGAN head (minibatch std, flatten at 4x4) with 8 channels
# per GroupNorm group: eps-fmnist's since 2026-12-06, vae-fmnist's since 2026-12-07 (the pool
# head over one-channel groups before; docs/presets.md)
_FMNIST = {
    "image_channels": 1,
    "image_size": 32,
    "encoder": _FMNIST_ENCODER,
    "discriminator": {"channels": 32, "channel_mult": (1, 2, 4), "head": "stylegan", "group_channels": 8},
}
PRESETS["eps-fmnist"] = {
    **_FMNIST,
    "kind": "epsilon",
    "decoder": {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attn_levels": (2,)},
}
PRESETS["vae-fmnist"] = {
    **_FMNIST,
    "kind": "vae",
    "decoder": {"channels": 36, "channel_mult": (1, 2, 2), "num_res_blocks": 1},
}


# Photos (RGB, 64 px) on a CPU budget, the lite setting scaled down: f8 with 8 latent
# channels gives 8x8x8 latents, as the paper's f16c8 at 128 px (24x compression here).
# Same encoder for both; decoders 3.71M (ε-VAE U-Net) vs 2.16M (VAE).
_PHOTO = {
    "image_channels": 3,
    "image_size": 64,
    "encoder": {"channels": 32, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1, "extra_blocks": 1,
                "latent_channels": 8},
    "discriminator": {"channels": 32, "channel_mult": (1, 2, 4, 4)},
}  # fmt: skip
PRESETS["eps-photo"] = {
    **_PHOTO,
    "kind": "epsilon",
    "decoder": {"channels": 32, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1, "attn_levels": (3,)},
}
PRESETS["vae-photo"] = {
    **_PHOTO,
    "kind": "vae",
    "decoder": {"channels": 36, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1},
}


# The paper's decoder-architecture ablation (PAPER.md section 2): a Transformer over pixel
# patches (DiT blocks, adaLN-zero on the flow time) with the same inputs as the U-Net, sized
# to the ADM decoder's parameters: 1.381M vs 1.371M (eps-fmnist, patch 2: 16x16 tokens) and
# 3.740M vs 3.708M (eps-photo, patch 4: 16x16 tokens).
PRESETS["eps-fmnist-dit"] = {
    **PRESETS["eps-fmnist"],
    "decoder": {"arch": "dit", "dit_hidden": 120, "dit_depth": 5, "dit_heads": 4, "dit_patch": 2},
}
PRESETS["eps-photo-dit"] = {
    **PRESETS["eps-photo"],
    "decoder": {"arch": "dit", "dit_hidden": 168, "dit_depth": 7, "dit_heads": 4, "dit_patch": 4},
}


# Training recipes. Lite/SD presets use the paper's recipe (TrainConfig defaults: batch
# 256, lr 1e-4 after 5k warm-up, LPIPS-VGG) and need a --data. The Fashion-MNIST pair
# trains the CPU budget below, the same steps for both, with the offline feature network
# as perceptual backbone.
_FMNIST_TRAIN = {
    "data": "fashion-mnist",
    "steps": 2000,
    "batch_size": 64,
    "lr": 2e-4,
    "disc_lr": 2e-4,
    "warmup": 200,
    "log_every": 25,
    "ckpt_every": 500,
    "sample_every": 500,
    "eval_every": 500,
    "loss": {"perceptual": "features:auto", "disc_start": 500},
}
# The ε-VAE's own: perceptual weight 0.1 instead of the paper's 0.5. Over two training seeds
# it meets both goal conditions at 3 reversed-log steps where 0.5 does not (fd_indep 0.32x the
# VAE's at the VAE's PSNR, vs 0.46x at -0.47 dB), with 16-22% less speckle; docs/presets.md has
# the figures and the setting it was chosen over (0.1 with γ = 1.0). The VAE keeps the
# paper's 0.5: the baseline as the paper trains it.
_EPS_FMNIST_TRAIN = {**_FMNIST_TRAIN, "loss": {**_FMNIST_TRAIN["loss"], "perceptual_weight": 0.1}}
# Photos: any folder (--data folder:PATH); about 30 minutes for eps-photo on 2 CPU cores.
_PHOTO_TRAIN = {
    "steps": 1000,
    "batch_size": 16,
    "lr": 2e-4,
    "disc_lr": 2e-4,
    "warmup": 100,
    "log_every": 25,
    "ckpt_every": 250,
    "sample_every": 250,
    "eval_every": 250,
    "eval_images": 128,
    "loss": {"perceptual": "features:auto", "disc_start": 250},
}
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "eps-fmnist": _EPS_FMNIST_TRAIN,
    "vae-fmnist": _FMNIST_TRAIN,
    "eps-photo": _PHOTO_TRAIN,
    "vae-photo": _PHOTO_TRAIN,
    "eps-fmnist-dit": _EPS_FMNIST_TRAIN,
    "eps-photo-dit": _PHOTO_TRAIN,
}


# Latent generators (PAPER.md section 5; DiT, Peebles & Xie 2023, table 1). The latent
# shape and class count are filled in from the autoencoder and the latent set. The sizes'
# training recipe is DiT's (AdamW 1e-4, batch 256, EMA 0.9999); `dit-fmnist` is a small
# DiT for 8x8 Fashion-MNIST latents that trains on the CPU budget.
_DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    f"dit-{name}": {"model": {"hidden": d, "depth": depth, "heads": heads, "patch_size": 2}, "train": {}}
    for name, (d, depth, heads) in _DIT_SIZES.items()
}
GENERATOR_PRESETS["dit-fmnist"] = {
    "model": {"hidden": 128, "depth": 6, "heads": 4, "patch_size": 2},
    "train": {
        "steps": 3000,
        "batch_size": 128,
        "lr": 3e-4,
        "warmup": 200,
        "ema": 0.999,
        "log_every": 50,
        "ckpt_every": 1000,
        "sample_every": 1000,
        "sample_steps": 25,
    },
}


def generator_run_config(name: str) -> GeneratorRunConfig:
    """Model and training recipe of generator preset `name` (latent shape filled in at training)."""
    if name not in GENERATOR_PRESETS:
        raise ConfigError(f"unknown generator preset {name!r}; available: {', '.join(GENERATOR_PRESETS)}")
    return from_dict(GeneratorRunConfig, {"preset": name, **copy.deepcopy(GENERATOR_PRESETS[name])})


def preset_names() -> list[str]:
    return list(PRESETS)


def model_config(name: str) -> AutoencoderConfig:
    """The AutoencoderConfig of preset `name`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return from_dict(AutoencoderConfig, copy.deepcopy(PRESETS[name]))


def train_config(name: str) -> TrainConfig:
    model_config(name)  # validates the name
    return from_dict(TrainConfig, copy.deepcopy(TRAIN_PRESETS.get(name, {})))


def run_config(name: str) -> RunConfig:
    """Model and training recipe of preset `name`, as saved in a run directory."""
    return RunConfig(preset=name, model=model_config(name), train=train_config(name))
