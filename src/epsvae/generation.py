"""Latent generation (PAPER.md section 5): latent datasets, a DiT trained on them, sampling.

1. `encode_dataset` encodes a dataset once into a memory-mappable latent set and records
   the per-channel latent mean and std in the autoencoder's own config.json, so every
   generator normalises latents the same way and nobody hard-codes a scale.
2. `LatentGenerator` is a class-conditional DiT trained with rectified flow (velocity
   prediction, logit-normal t) on normalised latents; labels are dropped with probability
   `class_dropout` so that one network gives both branches of classifier-free guidance.
   `train_generator` runs it on the same engine as the autoencoders.
3. `generate` samples latents, de-normalises them and decodes them with the autoencoder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import flow
from .config import (
    ConfigError,
    DiTConfig,
    GeneratorRunConfig,
    apply_overrides,
    from_dict,
    parse_value,
    to_dict,
)
from .data import BatchStream, StepBatches, load_batch, open_dataset
from .engine import Engine, read_json, resumable, saved_config, step_seed, write_json_atomic
from .images import save_grid, to_uint8
from .models import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    _atomic_write_text,
    load_pretrained,
    load_weights,
    read_json_config,
    write_pretrained,
)
from .nn.dit import DiT

LATENTS, LABELS, META = "latents.npy", "labels.npy", "meta.json"


def weights_digest(model_dir: str | Path) -> str:
    """A short digest of an exported model's weights: ties latents and generators to it."""
    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- latent datasets


@torch.no_grad()
def encode_dataset(
    model_dir: str | Path,
    data: str,
    out: str | Path,
    split: str = "train",
    flip: bool | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    record_stats: bool = True,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Encode `data`/`split` (plus horizontal flips where the dataset allows them) into `out`.

    Writes OUT/latents.npy (float32, (N, Cz, h, w), memory-mappable), OUT/labels.npy
    (int64; -1 = no label) and OUT/meta.json (written last: its presence marks a complete
    set). With `record_stats` the per-channel mean and std go into MODEL/config.json
    (refused if it records different ones, unless `force`). Returns the metadata.
    """
    model = load_pretrained(model_dir, device)
    cfg = model.config
    ds = open_dataset(data, split, cfg.image_size, cfg.image_channels, augment=False)
    if flip is None:
        flip = bool(getattr(ds, "flip_ok", True))
    n = min(len(ds), limit) if limit else len(ds)
    copies = 2 if flip else 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # an interrupted run must not look complete
    shape = (n * copies, *cfg.latent_shape)
    latents = np.lib.format.open_memmap(out / LATENTS, mode="w+", dtype=np.float32, shape=shape)
    labels = np.full((n * copies,), -1, dtype=np.int64)
    s1 = torch.zeros(cfg.latent_shape[0], dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="encode", dynamic_ncols=True)
    t0 = time.time()
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        x, y = load_batch(ds, idx)
        x = x.to(device)
        for copy_i, images in enumerate((x, x.flip(-1))[:copies]):
            z = model.encode(images).float().cpu()
            s1 += z.double().sum((0, 2, 3))
            s2 += (z.double() ** 2).sum((0, 2, 3))
            rows = slice(copy_i * n + idx[0], copy_i * n + idx[-1] + 1)
            latents[rows] = z.numpy()
            labels[rows] = y.numpy()
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    latents.flush()
    del latents
    np.save(out / LABELS, labels)
    count = n * copies * cfg.latent_shape[1] * cfg.latent_shape[2]
    mean = s1 / count
    std = (s2 / count - mean**2).clamp_min(0.0).sqrt()
    flat = [c for c, v in enumerate(std.tolist()) if v < 1e-8]
    if flat:
        raise ValueError(
            f"latent channel(s) {flat} are constant over {data}/{split}: the autoencoder is degenerate "
            "(or untrained); normalising by their std would divide by zero"
        )
    meta = {
        "autoencoder": str(model_dir),
        "autoencoder_weights": weights_digest(model_dir),
        "data": data,
        "split": split,
        "images": n,
        "flip": flip,
        "count": n * copies,
        "latent_shape": list(cfg.latent_shape),
        "num_classes": int(getattr(ds, "num_classes", 0)),
        "latent_mean": [_sig(v) for v in mean.tolist()],
        "latent_std": [_sig(v) for v in std.tolist()],
        "seconds": round(time.time() - t0, 1),
    }
    if record_stats:
        record_latent_stats(model_dir, meta["latent_mean"], meta["latent_std"], force)
    write_json_atomic(out / META, meta)
    return meta


def _sig(v: float) -> float:
    return float(f"{v:.7g}")  # 7 significant digits: readable JSON, no loss that matters


def record_latent_stats(model_dir: str | Path, mean: list[float], std: list[float], force: bool = False) -> None:
    """Write per-channel latent statistics into an exported autoencoder's config.json.

    Different statistics already there are refused unless `force`: generators and latent
    sets made with the old ones would stop matching this autoencoder."""
    data = read_json_config(model_dir)
    old = (data.get("latent_mean"), data.get("latent_std"))
    if old == (list(mean), list(std)):
        return
    if old != (None, None):
        if not force:
            raise ValueError(
                f"{Path(model_dir) / CONFIG_NAME} already records other latent statistics (mean {old[0]}, "
                f"std {old[1]}); generators trained with them would no longer match. Encode with --no-record, "
                "or pass --force to replace them"
            )
        print(f"[encode-dataset] replacing the latent statistics in {Path(model_dir) / CONFIG_NAME}")
    data["latent_mean"], data["latent_std"] = list(mean), list(std)
    _atomic_write_text(Path(model_dir) / CONFIG_NAME, json.dumps(data, indent=2) + "\n")


_META_TYPES = {"autoencoder_weights": str, "count": int, "latent_shape": list, "num_classes": int,
               "latent_mean": list, "latent_std": list}  # fmt: skip


def check_latent_meta(meta: Any, path: Path) -> dict[str, Any]:
    """A latent set's meta.json: required keys with the right types and consistent lengths."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in _META_TYPES if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a latent set written by `epsvae encode-dataset`")
    for key, tp in _META_TYPES.items():
        if not isinstance(meta[key], tp) or isinstance(meta[key], bool):
            raise ValueError(f"{path}: {key} must be a {tp.__name__}, got {meta[key]!r}")
    shape, c = meta["latent_shape"], None
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ValueError(f"{path}: latent_shape must be three positive integers (C, h, w), got {shape}")
    c = shape[0]
    stats = meta["latent_mean"] + meta["latent_std"]
    if len(meta["latent_mean"]) != c or len(meta["latent_std"]) != c:
        raise ValueError(f"{path}: latent_mean and latent_std need one value per latent channel ({c})")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats) or min(meta["latent_std"]) <= 0:
        raise ValueError(f"{path}: latent statistics must be finite numbers with a positive std")
    if meta["count"] < 0 or meta["num_classes"] < 0:
        raise ValueError(f"{path}: count and num_classes cannot be negative")
    return meta


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the latent set is incomplete, re-run encode-dataset")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({exc})") from None


class LatentDataset:
    """A latent set written by `encode_dataset`, memory-mapped; `batch` is the engine's fast path."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if not (directory / META).is_file():
            raise FileNotFoundError(
                f"{directory} is not a complete latent dataset ({META} is missing): "
                "write one with `epsvae encode-dataset --model AE --data SPEC --out DIR`"
            )
        self.meta = check_latent_meta(read_json(directory / META, "a latent set's metadata"), directory / META)
        self.latents = _load_array(directory / LATENTS, mmap=True)
        labels = _load_array(directory / LABELS, mmap=False)
        count, shape, k = self.meta["count"], tuple(self.meta["latent_shape"]), self.meta["num_classes"]
        if self.latents.dtype != np.float32 or self.latents.shape != (count, *shape):
            raise ValueError(
                f"{directory / LATENTS} holds {self.latents.dtype} {self.latents.shape}; its {META} says "
                f"float32 {(count, *shape)}: the set is damaged or was edited, re-run encode-dataset"
            )
        if labels.dtype != np.int64 or labels.shape != (count,):
            raise ValueError(f"{directory / LABELS} holds {labels.dtype} {labels.shape}; expected int64 ({count},)")
        if count and (labels.min() < -1 or labels.max() >= max(k, 0) and labels.max() != -1):
            raise ValueError(
                f"{directory / LABELS} has labels from {labels.min()} to {labels.max()}, outside -1 (none) .. "
                f"{k - 1} for the {k} classes its {META} records"
            )
        self.labels = torch.from_numpy(labels)
        self.num_classes = int(k)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.numpy()
        return torch.from_numpy(np.ascontiguousarray(self.latents[idx])), self.labels[idx]


# --------------------------------------------------------------------------- the generator


class LatentGenerator(nn.Module):
    """Class-conditional DiT velocity model over normalised latents (rectified flow, γ = 1)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.net = DiT(config)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        """Labels outside [0, num_classes) (e.g. -1: unlabelled) become the null label."""
        y = y.long()
        return torch.where((y < 0) | (y >= self.config.num_classes), torch.full_like(y, self.null_label), y)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t, self._labels(y))

    def guided_velocity(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance: v_u + s (v_c - v_u); at s = 1 exactly the conditional velocity."""
        if cfg_scale == 1.0:
            return self.velocity(x_t, t, y)
        null = torch.full_like(y, self.null_label)
        v = self.velocity(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    def draw(
        self,
        n: int,
        generator: torch.Generator | None,
        t_sampler: str = "logit-normal",
        t_mean: float = 0.0,
        t_std: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """All the randomness of a training forward over `n` latents: label dropout, t, noise (the
        training loop draws it for the global batch and slices it, as `Autoencoder.draw`)."""
        c, s = self.config.latent_channels, self.config.latent_size
        device = generator.device if generator is not None else device
        drop = torch.rand(n, generator=generator, device=device) < self.config.class_dropout
        t = flow.sample_t(t_sampler, n, t_mean, t_std, generator, device)
        return {"drop": drop, "t": t, "noise": torch.randn((n, c, s, s), generator=generator, device=device)}

    def forward(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        t_sampler: str = "logit-normal",
        t_mean: float = 0.0,
        t_std: float = 1.0,
        draws: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (per-sample velocity MSE (N,), t (N,)) for normalised latents x0 and labels y.

        The randomness comes from `draws` (see `draw`) or else `generator`."""
        if draws is None:
            draws = self.draw(x0.shape[0], generator, t_sampler, t_mean, t_std, x0.device)
        drop, t, noise = draws["drop"].to(x0.device), draws["t"].to(x0.device), draws["noise"].to(x0)
        y = torch.where(drop, torch.full_like(y, self.null_label), self._labels(y))
        v = self.net(flow.interpolate(x0, noise, t), t, y)
        target = flow.velocity_target(x0, noise)
        return (v.float() - target.float()).pow(2).mean((1, 2, 3)), t

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        noise: torch.Tensor,
        steps: int = 50,
        cfg_scale: float = 1.0,
        sampler: str = "euler",
    ) -> torch.Tensor:
        """Normalised latents for `labels` (N,), integrating from `noise` (N, Cz, h, w) at t = 1 to t = 0."""
        if sampler not in flow.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(flow.SAMPLERS)}")
        ts = flow.grid_uniform(steps)
        return flow.SAMPLERS[sampler](lambda x, t: self.guided_velocity(x, t, labels, cfg_scale), noise, ts)

    def save_pretrained(self, directory: str | Path, autoencoder: dict[str, Any], **meta: Any) -> Path:
        """config.json (DiT config + `_autoencoder`: path, weights digest, latent stats) + weights."""
        return write_pretrained(directory, self, to_dict(self.config), autoencoder=autoencoder, **meta)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> tuple[LatentGenerator, dict[str, Any]]:
        """(generator, its autoencoder record) from a directory written by `save_pretrained`."""
        data = read_json_config(directory)
        if data.get("_class_name") != cls.__name__:
            raise ConfigError(f"{directory} holds a {data.get('_class_name')}, not a {cls.__name__}")
        model = cls(from_dict(DiTConfig, {k: v for k, v in data.items() if not k.startswith("_")}, complete=True))
        record = data.get("_autoencoder")
        need = ("path", "weights_sha256", "latent_mean", "latent_std")
        if not isinstance(record, dict) or any(k not in record for k in need):
            raise ConfigError(
                f"{directory}/{CONFIG_NAME} lacks its autoencoder record (_autoencoder with {', '.join(need)}): "
                "without it the generator's latents cannot be decoded correctly"
            )
        load_weights(model, Path(directory) / WEIGHTS_NAME)
        return model.to(device).eval(), record


def load_autoencoder_for(record: dict[str, Any], ae_dir: str | Path | None = None, device: str = "cpu"):
    """The autoencoder a generator was trained for (or `ae_dir`), checked against its weights digest."""
    ae_dir = Path(ae_dir or record["path"])
    digest = weights_digest(ae_dir)
    if digest != record["weights_sha256"]:
        raise ValueError(
            f"{ae_dir} is not the autoencoder this generator was trained on (weights digest {digest}, "
            f"expected {record['weights_sha256']}); pass the right one with --ae"
        )
    ae = load_pretrained(ae_dir, device)
    if (list(ae.config.latent_mean or []), list(ae.config.latent_std or [])) != (
        list(record["latent_mean"]),
        list(record["latent_std"]),
    ):
        raise ValueError(f"{ae_dir}'s latent statistics changed since the generator was trained (re-encoded?)")
    return ae


# --------------------------------------------------------------------------- training


def prepare_generator_run(
    run_dir: str | Path,
    preset: str | None = None,
    ae: str | None = None,
    latents: str | None = None,
    overrides: list[str] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
) -> GeneratorRunConfig:
    """The generator run's config: loaded when `run_dir` exists (resume), else built from `preset`.

    The latent shape and the number of classes come from the autoencoder and the latent set."""
    from .presets import generator_run_config

    requested: dict[str, Any] = {"train.ae": ae, "train.latents": latents, "train.batch_size": batch_size}
    requested = {k: v for k, v in requested.items() if v is not None}
    for item in overrides or []:
        key, _, value = item.partition("=")
        requested[key.strip()] = parse_value(value.strip())
    if resumable(run_dir):
        cfg = from_dict(GeneratorRunConfig, saved_config(run_dir, "a generator run's config"), complete=True)
        if preset is not None and cfg.preset not in (None, preset):
            raise ConfigError(f"{run_dir} is a run of preset {cfg.preset!r}, not {preset!r}; use another --out")
        if requested and apply_overrides(cfg, requested) != cfg:
            raise ConfigError(
                f"{run_dir} already holds a run with another config; only --steps may change on resume "
                f"(asked: {', '.join(requested)}). Use a new --out for a new run."
            )
    else:
        cfg = generator_run_config(preset or "dit-S")
        cfg = apply_overrides(cfg, requested) if requested else cfg
        if cfg.train.ae is None or cfg.train.latents is None:
            raise ConfigError("a new generator run needs --ae (autoencoder directory) and --latents (latent set)")
        ds = LatentDataset(cfg.train.latents)
        _check_latents_match(cfg.train.ae, ds)  # before anything is written into run_dir
        c, h, w = ds.meta["latent_shape"]
        if h != w:
            raise ConfigError(f"the generator needs square latents, got {h}x{w}")
        fixed = {"model.latent_channels": c, "model.latent_size": h}
        for key, value in fixed.items():
            if key in requested and requested[key] != value:
                raise ConfigError(f"{key}={requested[key]} contradicts the latent set's shape {c}x{h}x{w}")
        if "model.num_classes" not in requested:  # an explicit 0 trains an unconditional model
            fixed["model.num_classes"] = ds.meta["num_classes"]
        elif not 0 <= requested["model.num_classes"] <= ds.meta["num_classes"] and ds.meta["num_classes"]:
            raise ConfigError(f"model.num_classes must be 0 or the latent set's {ds.meta['num_classes']}")
        cfg = apply_overrides(cfg, fixed)
    if steps is not None:
        cfg.train.steps = steps
    return cfg


def _check_latents_match(ae_dir: str, ds: LatentDataset) -> dict[str, Any]:
    """The autoencoder record a generator carries, after checking the latent set belongs to `ae_dir`."""
    digest = weights_digest(ae_dir)
    if ds.meta["autoencoder_weights"] != digest:
        raise ValueError(
            f"the latent set was encoded with another autoencoder (weights {ds.meta['autoencoder_weights']}) "
            f"than {ae_dir} ({digest}); re-run `epsvae encode-dataset --model {ae_dir}`"
        )
    data = read_json_config(ae_dir)
    channels = (data.get("encoder") or {}).get("latent_channels")
    if channels != ds.meta["latent_shape"][0]:
        raise ValueError(
            f"the latent set has {ds.meta['latent_shape'][0]} latent channels; {ae_dir}'s encoder makes {channels}"
        )
    if (data.get("latent_mean"), data.get("latent_std")) != (ds.meta["latent_mean"], ds.meta["latent_std"]):
        raise ValueError(
            f"{ae_dir}/config.json's latent statistics are not the latent set's: another encode-dataset "
            "run replaced them; re-encode this set or point --latents at the matching one"
        )
    return {
        "path": str(Path(ae_dir).resolve()),
        "weights_sha256": digest,
        "latent_mean": ds.meta["latent_mean"],
        "latent_std": ds.meta["latent_std"],
    }


def train_generator(
    run_dir: str | Path, cfg: GeneratorRunConfig, minutes: float | None = None, progress: bool = True
) -> dict:
    """Train (or resume) a latent generator run; exports the EMA weights to RUN/model at the end."""
    eng = Engine(run_dir, to_dict(cfg), cfg.train, progress)
    try:
        return _train_generator(eng, cfg, minutes)
    finally:
        eng.release()  # the run directory's lock, also after an error


def _train_generator(eng: Engine, cfg: GeneratorRunConfig, minutes: float | None) -> dict:
    tc = cfg.train
    device, main, acc = eng.device, eng.main, eng.accelerator
    ds = LatentDataset(tc.latents)
    record = _check_latents_match(tc.ae, ds)
    mean = torch.tensor(record["latent_mean"], device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(record["latent_std"], device=device).reshape(1, -1, 1, 1)
    batches = StepBatches(len(ds), tc.batch_size, eng.world, eng.rank, tc.seed)

    torch.manual_seed(tc.seed)
    model = LatentGenerator(cfg.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                            fused=device.type == "cuda")  # fmt: skip
    eng.restore({"model": model, "ema": ema, "opt": opt})
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    parts = {"model": raw, "ema": ema, "opt": opt}

    stream = BatchStream(ds, batches, eng.step)
    k = min(max(cfg.model.num_classes, 1), 10)  # the grid shows the first 10 classes
    ae = load_autoencoder_for(record, tc.ae, str(device)) if main else None

    def sample_grid() -> None:
        labels = torch.arange(k).repeat_interleave(8) if cfg.model.num_classes else torch.full((8 * k,), -1)
        images = _generate_images(ema, ae, labels, tc.seed, tc.sample_steps, tc.sample_cfg, None, str(device))
        rows = [images[i * 8 : (i + 1) * 8] for i in range(k)]
        save_grid(rows, eng.run_dir / "samples" / f"step{eng.step:07d}.png", scale=2 if images.shape[-1] <= 64 else 1)

    eng.start(minutes)
    while eng.step < tc.steps and not eng.should_stop(minutes):
        gen = eng.seed_step()
        z, y, _ = next(stream)  # this process's share of the global batch
        x0 = (z.to(device) - mean) / std
        draws = eng.my_share(raw.draw(tc.batch_size, gen, tc.t_sampler, tc.t_mean, tc.t_std))
        lr_scale = eng.warmup_lr([(opt, tc.lr)])
        for i, (xm, ym, dm) in eng.micro_batches(x0, y.to(device), draws):
            with eng.no_sync(model, i):
                with acc.autocast():
                    per, t = model(xm, ym, draws=dm)
                    loss = per.mean()
                eng.backward(loss)
            eng.record({"loss": loss})
            eng.record_by_t("loss_by_t", per, t)
        eng.step_optimizer(model, opt)
        eng.ema_update(ema, raw)
        ckpt_due, sample_due = eng.end_step(tc.lr * lr_scale)
        if ckpt_due:
            eng.save(parts)
        if sample_due and main:
            sample_grid()
    eng.stop_clock()
    eng.save(parts)
    eng.exit_if_interrupted()
    summary = eng.finish(raw)
    if eng.export_due(summary):
        sample_grid()
        ema_model = LatentGenerator(cfg.model)
        ema_model.load_state_dict({k: v.cpu() for k, v in ema.state_dict().items()})
        ema_model.save_pretrained(eng.run_dir / "model", record, step=eng.step)
        print(f"[train-dit] step {eng.step}: EMA weights exported to {eng.run_dir / 'model'}")
    eng.close()
    return summary


# --------------------------------------------------------------------------- sampling


def _noise(seed: int, index: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-image noise: image i gets the same draw whatever the batch size."""
    g = torch.Generator().manual_seed(step_seed(seed, stream, index))
    return torch.randn(shape, generator=g)


@torch.no_grad()
def _generate_images(
    gen: LatentGenerator,
    ae,
    labels: torch.Tensor,
    seed: int,
    steps: int,
    cfg_scale: float,
    decode_steps: int | None,
    device: str,
    first_index: int = 0,
) -> torch.Tensor:
    """Images in [-1, 1] for `labels`: generator -> de-normalise -> autoencoder decode."""
    c = gen.config.latent_channels
    s = gen.config.latent_size
    f = ae.downsample
    noise = torch.stack([_noise(seed, first_index + i, 0, (c, s, s)) for i in range(len(labels))]).to(device)
    z = gen.sample(labels.to(device), noise, steps, cfg_scale)
    z = ae.denormalize_latents(z)
    if ae.config.kind != "epsilon":
        return ae.decode(z).clamp(-1, 1)
    shape = (ae.config.image_channels, s * f, s * f)
    dnoise = torch.stack([_noise(seed, first_index + i, 1, shape) for i in range(len(labels))]).to(device)
    return ae.decode(z, steps=decode_steps, noise=dnoise).clamp(-1, 1)


def resolve_labels(spec: str | int, n: int, num_classes: int) -> torch.Tensor:
    """'all' -> i % K for image i (balanced); an integer K -> every image of class K."""
    if num_classes == 0:
        return torch.full((n,), -1, dtype=torch.long)  # unconditional model: the null label
    if str(spec) == "all":
        return torch.arange(n) % num_classes
    try:
        k = int(spec)
    except ValueError:
        raise ValueError(f"--labels must be 'all' or a class index, got {spec!r}") from None
    if not 0 <= k < num_classes:
        raise ValueError(f"class {k} is out of range: this generator has {num_classes} classes")
    return torch.full((n,), k, dtype=torch.long)


def load_generator(path: str | Path, device: str = "cpu") -> tuple[LatentGenerator, dict[str, Any]]:
    """A generator from an exported directory or a run directory (its model/)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or read_json_config(path).get("_class_name") != "LatentGenerator":
        if (path / "model" / CONFIG_NAME).is_file():
            path = path / "model"
        else:
            raise FileNotFoundError(f"{path} is neither a generator model directory nor a finished train-dit run")
    return LatentGenerator.from_pretrained(path, device)


def generate(
    dit: str | Path,
    n: int,
    labels: str | int = "all",
    cfg_scale: float = 1.5,
    steps: int = 50,
    decode_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str = "cpu",
    ae_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample `n` images end to end; returns uint8 `samples` (N, C, H, W), `labels` and timings."""
    gen, record = load_generator(dit, device)
    ae = load_autoencoder_for(record, ae_dir, device)
    y = resolve_labels(labels, n, gen.config.num_classes)
    chunks = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="sample", dynamic_ncols=True)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        part = y[start : start + batch_size]
        images = _generate_images(gen, ae, part, seed, steps, cfg_scale, decode_steps, device, start)
        chunks.append(to_uint8(images))
        if bar is not None:
            bar.update(len(part))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return {
        "samples": np.concatenate(chunks),
        "labels": y.numpy(),
        "seconds": seconds,
        "images_per_s": n / seconds,
        "decode_steps": decode_steps if decode_steps is not None else ae.config.flow.steps,
        "ae_kind": ae.config.kind,
    }


def class_grid(samples: np.ndarray, labels: np.ndarray, path: str | Path, per_row: int = 10) -> Path:
    """A PNG with one row per class (the first `per_row` samples of each)."""
    rows = [samples[labels == k][:per_row] for k in np.unique(labels)]
    rows = [r for r in rows if len(r)]
    return save_grid(rows, path, scale=2 if samples.shape[-1] <= 64 else 1)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_generation(
    samples: np.ndarray,
    data: str,
    split: str = "test",
    fid_features: str = "indep",
    limit: int | None = None,
    batch_size: int = 250,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fréchet distances between generated samples (uint8 (N, C, H, W)) and a dataset split.

    `fid_features` is a comma-separated list as in `epsvae eval` (fd_indep, fid_inception, fd_domain)."""
    from .data import iter_batches
    from .evaluate import feature_extractors
    from .metrics import FeatureStats, fid_from_stats

    if samples.dtype != np.uint8 or samples.ndim != 4 or len(samples) < 2:
        raise ValueError(f"samples must be uint8 (N, C, H, W) with N >= 2, got {samples.dtype} {samples.shape}")
    c, h = samples.shape[1], samples.shape[2]
    extractors = feature_extractors(fid_features, data, h, c)
    ds = open_dataset(data, split, h, c, augment=False)
    n_real = min(len(ds), limit) if limit else len(ds)

    def stats(batches) -> dict[str, FeatureStats]:
        acc: dict[str, FeatureStats] = {}
        for x in batches:
            for name, extract in extractors.items():
                f = extract(x.to(device))
                acc[name] = acc.get(name, FeatureStats(f.shape[1], device)).update(f)
        return acc

    real = stats(iter_batches(ds, n_real, batch_size))
    fake = stats(
        torch.from_numpy(samples[i : i + batch_size]).float() / 127.5 - 1.0 for i in range(0, len(samples), batch_size)
    )
    names = {"rfid_inception": "fid_inception"}
    return {
        **{names.get(k, k): fid_from_stats(real[k], fake[k]) for k in extractors},
        "n_samples": len(samples),
        "n_real": n_real,
        "data": data,
        "split": split,
        "fid_features": fid_features,
        "date": time.strftime("%Y-%m-%d"),
    }
