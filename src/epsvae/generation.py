"""Latent generation (PAPER.md section 5): latent datasets, a DiT trained on them, sampling.

1. `epsvae.latents.encode_dataset` encodes a dataset once into a memory-mappable latent set and records
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import flow
from .checkpoint import resumable, saved_config
from .config import (
    ConfigError,
    DiTConfig,
    GeneratorRunConfig,
    apply_overrides,
    from_dict,
    parse_value,
    to_dict,
)
from .data import BatchStream, StepBatches, open_dataset
from .engine import Engine, step_seed
from .images import save_grid, to_uint8
from .latents import LatentDataset, weights_digest
from .models import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_pretrained,
    load_weights,
    read_json_config,
    write_pretrained,
)
from .nn.dit import DiT

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
    from .evaluate import fd_networks, feature_extractors
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
        "fd_networks": {names.get(k, k): net for k, net in fd_networks(extractors).items()},
        "date": time.strftime("%Y-%m-%d"),
    }
