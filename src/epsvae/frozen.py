"""A decoder for someone else's encoder: read a frozen encoder from an epsvae model or a diffusers AutoencoderKL.

`epsvae train --frozen-encoder PATH` trains only the decoder (ε-VAE's, or a VAE decoder for
comparison) on the latents of a fixed encoder, as OpenAI's consistency decoder does for
Stable Diffusion's VAE. PATH is either

- an epsvae model directory (`config.json` + `model.safetensors`): its encoder config,
  weights and latent statistics are used as they are; or
- a diffusers `AutoencoderKL` directory (`config.json` + `diffusion_pytorch_model.safetensors`,
  or a pipeline directory with a `vae/` inside): its encoder is converted to epsvae's SD-shaped
  `Encoder` (strided-conv downsampling, one-head mid attention, 3x3 output conv, Gaussian
  posterior) with the 1x1 `quant_conv` folded into the output conv, so the converted encoder
  computes the same posterior (tested against diffusers). Its `scaling_factor` and
  `shift_factor` become the latent statistics (mean = shift, std = 1 / scale), which is what a
  diffusers pipeline does to latents, so generators and `AutoencoderEps` normalise the same way.

Nothing here imports diffusers: its files are read directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, EncoderConfig, from_dict, to_dict
from .models import CONFIG_NAME, WEIGHTS_NAME, read_json_config

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class FrozenEncoder:
    """What a run needs from a frozen encoder's source."""

    encoder: EncoderConfig
    image_channels: int
    state: dict[str, torch.Tensor]  # epsvae Encoder state dict (empty when read without weights)
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    source: dict[str, Any]  # where it came from: format, path


def read_frozen_encoder(path: str | Path, weights: bool = True) -> FrozenEncoder:
    """The encoder of an epsvae model directory or a diffusers AutoencoderKL directory (without
    `weights`: its config and latent statistics only, nothing read or converted beyond config.json)."""
    path = Path(path)
    if (path / "model_index.json").is_file() and (path / "vae").is_dir():  # a whole diffusers pipeline
        path = path / "vae"
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"--frozen-encoder {path}: no config.json (an epsvae model or diffusers AutoencoderKL)")
    data = read_json_config(path)
    if data.get("_class_name") == "AutoencoderKL":
        return _from_diffusers(path, data, weights)
    if data.get("_class_name") in ("EpsilonVAE", "BaselineVAE"):
        return _from_epsvae(path, weights)
    raise ConfigError(
        f"--frozen-encoder {path} holds a {data.get('_class_name')!r}; expected an epsvae model directory "
        "or a diffusers AutoencoderKL"
    )


def _from_epsvae(path: Path, weights: bool) -> FrozenEncoder:
    from safetensors.torch import load_file

    from .models import read_config

    cfg = read_config(path)
    state = load_file(str(path / WEIGHTS_NAME)) if weights else {}
    enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if cfg.latent_mean is None or cfg.latent_std is None:  # not yet measured: identity normalisation
        mean, std = (0.0,) * cfg.encoder.latent_channels, (1.0,) * cfg.encoder.latent_channels
    else:
        mean, std = tuple(cfg.latent_mean), tuple(cfg.latent_std)
    source = {"format": "epsvae", "path": str(path.resolve())}
    return FrozenEncoder(cfg.encoder, cfg.image_channels, enc, mean, std, source)


# --------------------------------------------------------------------------- diffusers AutoencoderKL


def diffusers_encoder_config(data: dict[str, Any]) -> EncoderConfig:
    """epsvae's EncoderConfig for a diffusers AutoencoderKL config (refused where the layouts differ)."""
    boc = list(data.get("block_out_channels", (64,)))
    groups = data.get("norm_num_groups", 32)
    if any(c % 32 for c in boc) or groups != 32:
        raise ConfigError(
            f"this AutoencoderKL uses GroupNorm with {groups} groups over {boc} channels; epsvae's encoder "
            "needs 32 groups and channel counts divisible by 32"
        )
    if data.get("act_fn", "silu") != "silu" or any(t != "DownEncoderBlock2D" for t in data.get("down_block_types", [])):
        raise ConfigError("only AutoencoderKL encoders made of DownEncoderBlock2D with SiLU can be converted")
    if any(c % boc[0] for c in boc):
        raise ConfigError(f"block_out_channels {boc} are not multiples of the first")
    return EncoderConfig(
        channels=boc[0],
        channel_mult=tuple(c // boc[0] for c in boc),
        num_res_blocks=int(data.get("layers_per_block", 1)),
        extra_blocks=2,
        mid_attention=bool(data.get("mid_block_add_attention", True)),
        downsample_conv=True,
        out_kernel=3,
        latent_channels=int(data.get("latent_channels", 4)),
        gaussian=True,
    )


def _from_diffusers(path: Path, data: dict[str, Any], weights: bool) -> FrozenEncoder:
    file = next((path / n for n in DIFFUSERS_WEIGHTS if (path / n).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{path} has no {' or '.join(DIFFUSERS_WEIGHTS)}")
    cfg = diffusers_encoder_config(data)
    enc = {}
    if weights:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
        enc = convert_diffusers_encoder(state, cfg, use_quant_conv=data.get("use_quant_conv", True))
    c = cfg.latent_channels
    if data.get("latents_mean") is not None and data.get("latents_std") is not None:
        mean, std = tuple(map(float, data["latents_mean"])), tuple(map(float, data["latents_std"]))
    else:  # diffusers pipelines use (z - shift) * scale
        scale, shift = float(data.get("scaling_factor", 0.18215)), float(data.get("shift_factor") or 0.0)
        mean, std = (shift,) * c, (1.0 / scale,) * c
    source = {"format": "diffusers", "path": str(path.resolve())}
    return FrozenEncoder(cfg, int(data.get("in_channels", 3)), enc, mean, std, source)


def _diffusers_sequence(cfg: EncoderConfig) -> list[str | None]:
    """The diffusers module behind each entry of epsvae's `Encoder.layers` (None: no weights)."""
    seq: list[str | None] = ["conv_in"]
    for level in range(len(cfg.channel_mult)):
        if level > 0:  # epsvae downsamples at the start of a level, diffusers at the end of the previous one
            seq += [None, f"down_blocks.{level - 1}.downsamplers.0.conv"]
        seq += [f"down_blocks.{level}.resnets.{j}" for j in range(cfg.num_res_blocks)]
    seq += ["mid_block.resnets.0"] + (["mid_block.attentions.0"] if cfg.mid_attention else [])
    seq += ["mid_block.resnets.1", "conv_norm_out", None, "conv_out"]
    return seq


def convert_diffusers_encoder(
    state: dict[str, torch.Tensor], cfg: EncoderConfig, use_quant_conv: bool = True
) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict -> the state dict of epsvae's `Encoder(cfg)`."""
    from .nn.autoencoder import Encoder
    from .nn.layers import AttentionBlock, ResBlock

    with torch.device("meta"):
        target = Encoder(cfg, 3)
    layers = list(target.layers)
    seq = _diffusers_sequence(cfg)
    if len(seq) != len(layers):
        raise ConfigError("the AutoencoderKL's block layout does not match epsvae's SD-shaped encoder")

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise ConfigError(f"the AutoencoderKL weights have no {name!r}: not an AutoencoderKL of this config")
        return state[name].float()

    out: dict[str, torch.Tensor] = {}
    for i, (layer, src) in enumerate(zip(layers, seq, strict=True)):
        if src is None:
            continue
        src, dst = f"encoder.{src}", f"layers.{i}"
        if isinstance(layer, ResBlock):
            for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
                out[f"{dst}.{a}.weight"], out[f"{dst}.{a}.bias"] = get(f"{src}.{b}.weight"), get(f"{src}.{b}.bias")
            if not isinstance(layer.skip, torch.nn.Identity):
                out[f"{dst}.skip.weight"] = get(f"{src}.conv_shortcut.weight")
                out[f"{dst}.skip.bias"] = get(f"{src}.conv_shortcut.bias")
        elif isinstance(layer, AttentionBlock):
            names = ("to_q", "to_k", "to_v", "to_out.0", "group_norm")
            if f"{src}.to_q.weight" not in state:  # checkpoints before diffusers 0.14 named them differently
                names = ("query", "key", "value", "proj_attn", "group_norm")
            q, k, v, o, gn = names
            w = torch.cat([get(f"{src}.{n}.weight") for n in (q, k, v)])
            out[f"{dst}.qkv.weight"] = w.reshape(*w.shape[:2], 1, 1)
            out[f"{dst}.qkv.bias"] = torch.cat([get(f"{src}.{n}.bias") for n in (q, k, v)])
            out[f"{dst}.proj.weight"] = get(f"{src}.{o}.weight").reshape(*get(f"{src}.{o}.weight").shape[:2], 1, 1)
            out[f"{dst}.proj.bias"] = get(f"{src}.{o}.bias")
            out[f"{dst}.norm.weight"], out[f"{dst}.norm.bias"] = get(f"{src}.{gn}.weight"), get(f"{src}.{gn}.bias")
        else:  # a conv or a GroupNorm
            out[f"{dst}.weight"], out[f"{dst}.bias"] = get(f"{src}.weight"), get(f"{src}.bias")
    if use_quant_conv:  # fold the 1x1 quant_conv into the 3x3 output conv: both are linear
        last = f"layers.{len(layers) - 1}"
        q = get("quant_conv.weight").double()[:, :, 0, 0]  # (O, M)
        w, b = out[f"{last}.weight"].double(), out[f"{last}.bias"].double()
        out[f"{last}.weight"] = torch.einsum("om,mikl->oikl", q, w).float()
        out[f"{last}.bias"] = (q @ b + get("quant_conv.bias").double()).float()
    expected = {k: v.shape for k, v in target.state_dict().items()}
    bad = [k for k in expected if k not in out or out[k].shape != expected[k]]
    if bad or len(out) != len(expected):
        raise ConfigError(f"converting the AutoencoderKL encoder failed at {bad[:3]}: the layouts differ")
    return out


def apply_frozen_encoder(cfg, path: str) -> FrozenEncoder:
    """Make a run's model config use the frozen encoder at `path` (its encoder, channels and latent
    statistics), printing what changed. The weights are read when the run starts (`train`)."""
    frozen = read_frozen_encoder(path, weights=False)
    model = cfg.model
    if model.encoder != frozen.encoder:
        print(f"[train] encoder config taken from the frozen encoder {path}")
    if model.image_channels != frozen.image_channels:
        print(f"[train] image channels {model.image_channels} -> {frozen.image_channels} (the frozen encoder's)")
    model.encoder = frozen.encoder
    model.image_channels = frozen.image_channels
    model.latent_mean, model.latent_std = frozen.latent_mean, frozen.latent_std
    # re-validate the whole model config (downsample factor vs image size, VAE decoder depth)
    cfg.model = from_dict(type(model), to_dict(model))
    return frozen
