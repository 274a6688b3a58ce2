"""Typed configuration: one source of truth, serialised with every run and export.

Every config is a dataclass; `from_dict` rebuilds one from JSON and rejects unknown
keys, and `apply_overrides` applies `--set section.key=value` strings the same strict way.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")
SWITCH = ("auto", "on", "off")  # performance switches: 'auto' turns them on with CUDA


class ConfigError(ValueError):
    """A configuration that cannot be built: unknown key, bad value, wrong type."""


@dataclass
class EncoderConfig:
    """Conv encoder (PAPER.md section 2). Downsample factor = 2 ** (len(channel_mult) - 1)."""

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    extra_blocks: int = 2  # residual blocks at the lowest resolution
    mid_attention: bool = False  # SD: attention between the two lowest-resolution blocks
    downsample_conv: bool = False  # SD: stride-2 conv; lite: average pooling
    out_kernel: int = 1  # lite: 1x1 conv to the latent; SD: 3x3
    latent_channels: int = 8
    gaussian: bool = False  # predict (mean, logvar) and sample; adds a KL term in training

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


PADDING_MODES = ("zeros", "reflect", "replicate")


@dataclass
class DecoderConfig:
    """Decoder size. ε-VAE's ADM U-Net uses the fields up to `grad_checkpointing` and
    `padding_mode`; the VAE decoder the first three and `padding_mode`; `arch='dit'` makes
    ε-VAE's decoder a Transformer over pixel patches (the paper's architecture ablation)
    sized by the `dit_*` fields."""

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (2,)  # U-Net levels (0 = full resolution) with self-attention
    head_channels: int = 64
    resblock_updown: bool = True  # ADM: resample inside residual blocks
    dropout: float = 0.0
    grad_checkpointing: bool = False
    arch: str = "adm"  # ε-VAE's decoder: 'adm' (U-Net) or 'dit' (Transformer over pixel patches)
    dit_hidden: int = 256
    dit_depth: int = 8
    dit_heads: int = 4
    dit_patch: int = 2
    dit_mlp_ratio: float = 4.0
    # How the decoder's 3x3 convs pad the image border: 'zeros' (ADM's), or 'reflect' /
    # 'replicate', which show the U-Net at the border the noise statistics of the inside
    # (with zeros, ε-VAE's border pixels err 1.3-2x as much as its inside on photos).
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if self.arch not in ("adm", "dit"):
            raise ConfigError(f"decoder.arch must be 'adm' or 'dit', got {self.arch!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"decoder.padding_mode must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}"
            )
        if self.arch == "dit" and self.padding_mode != "zeros":
            raise ConfigError(
                "decoder.padding_mode applies to the U-Net (arch 'adm'); the DiT decoder has no padded convs"
            )
        if self.arch == "dit" and (self.dit_hidden % self.dit_heads or self.dit_hidden % 4):
            raise ConfigError(
                f"decoder.dit_hidden {self.dit_hidden} must be divisible by dit_heads {self.dit_heads} and by 4"
            )


@dataclass
class DiscriminatorConfig:
    """Time-conditioned StyleGAN-style discriminator for denoising trajectory matching."""

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # one blurred x2 downsampling per entry
    group_channels: int = 0  # channels per GroupNorm group in AdaGN; 0: 32 groups (1 channel each at 32)
    head: str = "pool"  # 'pool' (global mean, one logit), 'stylegan' (minibatch std, flatten at 4x4), 'patch'
    mbstd_group: int = 4  # stylegan head: images per minibatch-std group

    def __post_init__(self) -> None:
        if self.head not in ("pool", "stylegan", "patch"):
            raise ConfigError(f"discriminator.head must be 'pool', 'stylegan' or 'patch', got {self.head!r}")

    def check_size(self, size: int, key: str) -> None:
        """The stylegan head flattens a 4x4 map: images of `size` px (set by config key `key`) must
        leave at least that after the discriminator's levels."""
        levels = len(self.channel_mult)
        if self.head == "stylegan" and size < 4 * 2**levels:
            raise ConfigError(
                f"the stylegan discriminator head needs a 4x4 feature map: {key} {size} with {levels} "
                f"discriminator levels leaves {size // 2**levels}x{size // 2**levels}; use {key} >= "
                f"{4 * 2**levels}, fewer model.discriminator.channel_mult levels, or model.discriminator.head=pool"
            )


@dataclass
class FlowConfig:
    """Rectified-flow settings (PAPER.md section 3)."""

    gamma: float = 0.6  # noise scaling: data enters x_t as (1 - t) * gamma * x0
    t_sampler: str = "logit-normal"  # training time sampler: 'logit-normal' or 'uniform'
    t_mean: float = 0.0
    t_std: float = 1.0
    # fractions of training times drawn instead from U(0, 1), and from the points of the
    # default decoding grid (`grid`, `steps`, t > 0), where few-step decoding evaluates
    t_uniform_mix: float = 0.0
    t_grid_mix: float = 0.0
    # inference grid: 'reversed-log', 'uniform', or 'matched' (uniform moved by t_mean's shift)
    grid: str = "reversed-log"
    steps: int = 3  # default decoding steps
    # what the decoder network outputs: 'velocity' (the paper's) or 'x0' (the clean image,
    # turned into v = (x_t - γ x0) / max(t, t_min); not in the paper)
    prediction: str = "velocity"
    t_min: float = 0.05

    def __post_init__(self) -> None:
        from .flow import PREDICTIONS

        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"flow.prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.t_uniform_mix + self.t_grid_mix > 1:
            raise ConfigError(
                f"flow.t_uniform_mix + flow.t_grid_mix must be at most 1, got {self.t_uniform_mix + self.t_grid_mix}"
            )


@dataclass
class AutoencoderConfig:
    """A whole autoencoder. `kind` is 'epsilon' (diffusion decoder) or 'vae' (deterministic)."""

    kind: str = "epsilon"
    image_channels: int = 3
    image_size: int = 128  # training resolution; any multiple of the downsample factor decodes
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Per-channel latent statistics, filled in by `epsvae encode-dataset`, so that a latent
    # generator normalises latents the same way everywhere.
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("epsilon", "vae"):
            raise ConfigError(f"kind must be 'epsilon' or 'vae', got {self.kind!r}")
        if self.image_size % self.encoder.downsample:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by the downsample factor {self.encoder.downsample}"
            )
        if len(self.decoder.channel_mult) < 1 or len(self.encoder.channel_mult) < 1:
            raise ConfigError("channel_mult needs at least one level")
        if self.kind == "vae" and self.decoder.arch != "adm":
            raise ConfigError("decoder.arch 'dit' is an ε-VAE decoder; the VAE's decoder is convolutional")
        if self.decoder.arch == "dit" and self.image_size % self.decoder.dit_patch:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by the decoder's patch size {self.decoder.dit_patch}"
            )
        if self.kind == "vae" and self.decoder_upsample != self.encoder.downsample:
            raise ConfigError(
                f"the VAE decoder upsamples x{self.decoder_upsample} but the encoder downsamples "
                f"x{self.encoder.downsample}: give both the same number of channel_mult levels"
            )
        from .flow import GRIDS

        if self.flow.grid not in GRIDS:
            raise ConfigError(f"flow.grid must be one of {', '.join(map(repr, GRIDS))}, got {self.flow.grid!r}")
        if self.flow.t_sampler not in ("logit-normal", "uniform"):
            raise ConfigError(f"flow.t_sampler must be 'logit-normal' or 'uniform', got {self.flow.t_sampler!r}")
        if not 0 < self.flow.gamma <= 1:
            raise ConfigError(f"flow.gamma must be in (0, 1], got {self.flow.gamma}")
        self.discriminator.check_size(self.image_size, "model.image_size")

    @property
    def decoder_upsample(self) -> int:
        return 2 ** (len(self.decoder.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.encoder.downsample
        return (self.encoder.latent_channels, self.image_size // f, self.image_size // f)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)


@dataclass
class LossConfig:
    """Weights and choices of every loss term; defaults are the paper's recipe."""

    velocity_weight: float = 1.0  # ε-VAE: MSE between predicted and true velocity
    perceptual: str = "lpips-vgg"  # backbone spec, see epsvae.perceptual
    perceptual_weight: float = 0.5
    adv_weight: float = 0.5
    disc_start: int = 0  # step at which the adversarial term (and discriminator training) starts
    adv_ramp: int = 0  # steps over which the adversarial weight ramps linearly in after disc_start (0: a hard switch)
    # 'fixed': adv_weight as is; 'adaptive': adv_weight times VQGAN's ratio of the gradient norms
    # of the other terms and of the adversarial term at the decoder's last layer
    adv_weighting: str = "fixed"
    r1_weight: float = 10.0
    r1_heuristic: bool = False  # StyleGAN2-ADA's R1 weight 0.0002 * H * W / batch_size instead of r1_weight
    r1_every: int = 4  # lazy R1: every k discriminator steps, scaled by k
    r1_subsample: int = 1  # R1 on every k-th image of the batch only (an unbiased estimate, k times cheaper)
    x0_l1_weight: float = 0.0  # ε-VAE: optional L1 on the one-step estimate x0_hat (not in the paper)
    recon: str = "l1"  # VAE reconstruction loss: 'l1' or 'l2'
    recon_weight: float = 1.0
    kl_weight: float = 1e-6  # used only with a Gaussian posterior
    distill_weight: float = 1.0  # distillation: MSE between the one-step decode and the teacher's decode

    def __post_init__(self) -> None:
        if self.adv_weighting not in ("fixed", "adaptive"):
            raise ConfigError(f"loss.adv_weighting must be 'fixed' or 'adaptive', got {self.adv_weighting!r}")


@dataclass
class TrainConfig:
    """The training recipe (PAPER.md section 4). `batch_size` is the global batch of one optimiser step."""

    data: str | None = None  # dataset spec: fashion-mnist, folder:PATH, skimage-photos
    resolution: int | None = None  # crop size for folder/photo data; None = the model's image_size
    steps: int = 1_000_000
    batch_size: int = 256  # global: split over processes, then micro-batches (gradient accumulation)
    micro_batch_size: int | None = None  # images per forward per process; None = the process's whole share
    lr: float = 1e-4
    disc_lr: float = 1e-4
    warmup: int = 5000  # linear learning-rate warm-up steps, then constant
    beta1: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    ema: float = 0.999
    ema_warmup: bool = True  # decay min(ema, (1 + step) / (10 + step)): early EMA tracks the weights
    seed: int = 0
    mixed_precision: str = "auto"  # 'auto' (bf16 on GPU, fp32 on CPU), 'bf16' or 'no'
    compile: str = "auto"  # torch.compile the encoder and decoder: 'auto' (on with CUDA), 'on' or 'off'
    channels_last: str = "auto"  # NHWC activations and weights: 'auto' (on with CUDA), 'on' or 'off'
    num_workers: int = 0  # data-loading processes for image folders
    strict_data: bool = False  # error on an unreadable image instead of skipping it
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 1000
    # validation on a fixed held-out batch (the test split): PSNR and fd_indep every
    # `eval_every` steps (0: never), into stats.jsonl and TensorBoard
    eval_every: int = 0
    eval_images: int = 256
    init_from: str | None = None  # an exported model directory whose weights start the run (fine-tuning)
    # an epsvae model or diffusers AutoencoderKL directory whose encoder is used frozen: only the decoder trains
    frozen_encoder: str | None = None
    # one-step distillation (`epsvae distill`): an exported ε-VAE whose `distill_steps`-step decodes
    # (None: its default) the run learns to reproduce in one step from the same noise
    distill_from: str | None = None
    distill_steps: int | None = None
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ConfigError(f"train.mixed_precision must be auto, bf16, fp16 or no, got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and self.loss.adv_weighting == "adaptive":
            raise ConfigError(
                "train.loss.adv_weighting=adaptive compares unscaled fp16 gradients (they underflow); "
                "use mixed_precision bf16 or no"
            )
        for name in ("compile", "channels_last"):
            if getattr(self, name) not in SWITCH:
                raise ConfigError(f"train.{name} must be one of {', '.join(SWITCH)}, got {getattr(self, name)!r}")

    def switch(self, name: str, device: torch.device | str) -> bool:
        """Whether a performance switch ('auto' = on with CUDA) is on for `device`."""
        value = getattr(self, name)
        return value == "on" or (value == "auto" and torch.device(device).type == "cuda")


@dataclass
class RunConfig:
    """What a run directory's config.json holds: the model and how it is trained."""

    preset: str | None = None
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.resolution is not None:  # the training crops are what the discriminator sees
            self.model.discriminator.check_size(self.train.resolution, "train.resolution")


@dataclass
class DiTConfig:
    """Latent generator: DiT (Peebles & Xie 2023) with adaLN-zero blocks, class-conditional.

    The latent shape comes from the autoencoder the generator is trained for; label
    `num_classes` is the null label used for classifier-free guidance."""

    hidden: int = 384
    depth: int = 12
    heads: int = 6
    patch_size: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_dropout: float = 0.1  # training: labels replaced by the null label with this probability
    latent_channels: int = 4
    latent_size: int = 32

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.latent_size % self.patch_size:
            raise ConfigError(
                f"the latent size {self.latent_size} is not divisible by the patch size {self.patch_size}"
            )
        if not 0 <= self.class_dropout < 1:
            raise ConfigError(f"class_dropout must be in [0, 1), got {self.class_dropout}")


@dataclass
class GeneratorTrainConfig:
    """How a latent generator trains: rectified flow on normalised latents (PAPER.md section 5)."""

    ae: str | None = None  # the autoencoder's exported model directory (latent statistics in its config)
    latents: str | None = None  # directory written by `epsvae encode-dataset`
    steps: int = 400_000
    batch_size: int = 256  # global, as for the autoencoders
    micro_batch_size: int | None = None
    lr: float = 1e-4
    warmup: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.9999
    ema_warmup: bool = True
    t_sampler: str = "logit-normal"
    t_mean: float = 0.0
    t_std: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    log_every: int = 50
    ckpt_every: int = 5000
    sample_every: int = 5000
    sample_steps: int = 50  # flow steps of the sample grids written during training
    sample_cfg: float = 1.5


@dataclass
class GeneratorRunConfig:
    """What a generator run directory's config.json holds."""

    preset: str | None = None
    model: DiTConfig = field(default_factory=DiTConfig)
    train: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(tp: Any, value: Any, where: str, complete: bool = False) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where, complete)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "", complete: bool = False) -> T:
    """Build dataclass `cls` from `data`, recursively; unknown keys, wrong types and out-of-range
    values are errors. `complete` (a saved config: a run's or a model's config.json): a missing
    section (a field that is itself a config) is an error too, never silently the defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of config keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    sections = [n for n in names if dataclasses.is_dataclass(hints[n])]
    missing = sorted(n for n in sections if n not in data)
    if missing and complete:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"config section(s) {', '.join(prefix + k for k in missing)} missing")
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' in ' + where if where else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k, complete) for k, v in data.items()}
    _check_ranges(cls.__name__, kwargs, where)
    return cls(**kwargs)


# Allowed values of numeric fields, per config class: '[a,b]' closed, '(a,b)' open, 'inf' unbounded.
# Checked on every build (presets, --set, a run's or a model's config.json).
_RANGES: dict[str, dict[str, str]] = {
    "EncoderConfig": {"channels": "[1,inf)", "num_res_blocks": "[0,inf)", "extra_blocks": "[0,inf)",
                      "out_kernel": "[1,inf)", "latent_channels": "[1,inf)"},
    "DecoderConfig": {"channels": "[1,inf)", "num_res_blocks": "[0,inf)", "head_channels": "[1,inf)",
                      "dropout": "[0,1)", "dit_hidden": "[1,inf)", "dit_depth": "[1,inf)", "dit_heads": "[1,inf)",
                      "dit_patch": "[1,inf)", "dit_mlp_ratio": "(0,inf)"},
    "DiscriminatorConfig": {"channels": "[1,inf)", "group_channels": "[0,inf)", "mbstd_group": "[1,inf)"},
    "FlowConfig": {"t_std": "(0,inf)", "steps": "[1,inf)", "t_uniform_mix": "[0,1]", "t_grid_mix": "[0,1]",
                   "t_min": "(0,1]"},
    "AutoencoderConfig": {"image_channels": "[1,4]", "image_size": "[1,inf)"},
    "LossConfig": {"velocity_weight": "[0,inf)", "perceptual_weight": "[0,inf)", "adv_weight": "[0,inf)",
                   "disc_start": "[0,inf)", "adv_ramp": "[0,inf)",
                   "r1_weight": "[0,inf)", "r1_every": "[1,inf)", "r1_subsample": "[1,inf)",
                   "x0_l1_weight": "[0,inf)", "recon_weight": "[0,inf)", "kl_weight": "[0,inf)",
                   "distill_weight": "[0,inf)"},
    "TrainConfig": {"resolution": "[1,inf)", "steps": "[1,inf)", "batch_size": "[1,inf)",
                    "micro_batch_size": "[1,inf)", "lr": "[0,inf)",
                    "disc_lr": "[0,inf)", "warmup": "[0,inf)", "beta1": "[0,1)", "beta2": "[0,1)",
                    "grad_clip": "[0,inf)", "ema": "(0,1)", "num_workers": "[0,inf)", "log_every": "[1,inf)",
                    "ckpt_every": "[1,inf)", "sample_every": "[1,inf)", "eval_every": "[0,inf)",
                    "eval_images": "[1,inf)", "distill_steps": "[1,inf)"},
    "DiTConfig": {"hidden": "[1,inf)", "depth": "[1,inf)", "heads": "[1,inf)", "patch_size": "[1,inf)",
                  "mlp_ratio": "(0,inf)", "num_classes": "[0,inf)", "latent_channels": "[1,inf)",
                  "latent_size": "[1,inf)"},
    "GeneratorTrainConfig": {"steps": "[1,inf)", "batch_size": "[1,inf)", "micro_batch_size": "[1,inf)",
                             "lr": "(0,inf)", "warmup": "[0,inf)",
                             "beta1": "[0,1)", "beta2": "[0,1)", "weight_decay": "[0,inf)", "grad_clip": "[0,inf)",
                             "ema": "(0,1)", "t_std": "(0,inf)", "log_every": "[1,inf)", "ckpt_every": "[1,inf)",
                             "sample_every": "[1,inf)", "sample_steps": "[1,inf)", "sample_cfg": "[0,inf)"},
}  # fmt: skip


def _check_ranges(name: str, values: dict[str, Any], where: str) -> None:
    for key, spec in _RANGES.get(name, {}).items():
        v = values.get(key)
        if v is None or isinstance(v, bool):
            continue
        lo, hi = (float(b) for b in spec[1:-1].split(","))
        ok = (v >= lo if spec[0] == "[" else v > lo) and (v <= hi if spec[-1] == "]" else v < hi)
        if not ok:
            low = f"{'at least' if spec[0] == '[' else 'above'} {lo:g}"
            want = low if hi == math.inf else f"in {spec[0]}{lo:g}, {hi:g}{spec[-1]}"
            raise ConfigError(f"{where + '.' if where else ''}{key} must be {want}, got {v}")


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2], 'null' -> None, else the string."""
    lowered = {"true": True, "false": False, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: T, overrides: dict[str, Any] | list[str]) -> T:
    """Return a copy of `cfg` with dotted keys replaced: {'decoder.channels': 32} or ['decoder.channels=32']."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = parse_value(value.strip())
        overrides = pairs
    data = dataclasses.asdict(cfg)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}{_hint(data, key)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}{_hint(data, key)}; valid here: {', '.join(sorted(node))}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def _hint(data: dict[str, Any], key: str) -> str:
    """' (did you mean 'model.image_size'?)' when `key` exists one section down (one spelling everywhere)."""
    for section, sub in data.items():
        node = sub
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return f" (did you mean '{section}.{key}'?)"
    return ""


_MISSING = object()
