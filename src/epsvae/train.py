"""The training engine: one loop for ε-VAE and the VAE baseline, one CPU to many GPUs.

Hugging Face Accelerate over PyTorch DDP. A run directory holds `config.json` (the
resolved RunConfig), `checkpoint.pt` (full training state, written atomically),
`stats.jsonl`, TensorBoard logs, sample grids and, at the end, `model/` (EMA weights
as safetensors + config). Starting `train` on an existing run directory resumes it:
every step reseeds from (seed, rank, step) and reads the batch addressed by its step,
so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from . import losses
from .checkpoint import CHECKPOINT, load_checkpoint, resumable, saved_config
from .config import ConfigError, RunConfig, apply_overrides, from_dict, parse_value, to_dict
from .data import BatchStream, StepBatches, open_dataset
from .engine import Engine, TrainingDiverged
from .evaluate import HeldOutCheck
from .frozen import apply_frozen_encoder, read_frozen_encoder
from .images import save_grid
from .models import (
    WEIGHTS_NAME,
    Autoencoder,
    build_discriminator,
    build_model,
    check_state_dict,
    load_pretrained,
    load_weights,
    read_config,
)
from .perceptual import build_perceptual

__all__ = ["CHECKPOINT", "TrainingDiverged", "export", "load_checkpoint", "prepare_distill", "prepare_run", "train"]


# --------------------------------------------------------------------------- run directory


def prepare_run(
    run_dir: str | Path,
    preset: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    init_from: str | None = None,
    frozen_encoder: str | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """The run's config: loaded from `run_dir` when it exists (resume), else built from `preset`
    (or from `base`, a config built by the caller, e.g. `prepare_distill`).

    A resumed run may change only its length (`steps`); anything else would make the
    continuation differ from the run that was started. `init_from` (an exported model
    directory) starts a new run from its weights.
    """
    from .presets import run_config

    if init_from is not None:
        read_config(init_from)  # a readable error now, not after the run directory exists
        init_from = str(Path(init_from).resolve())
    if frozen_encoder is not None:
        frozen_encoder = str(Path(frozen_encoder).resolve())
    given = {"train.data": data, "train.batch_size": batch_size, "train.init_from": init_from,
             "train.frozen_encoder": frozen_encoder}  # fmt: skip
    requested = {k: v for k, v in given.items() if v is not None}
    for item in overrides or []:
        key, _, value = item.partition("=")
        requested[key.strip()] = parse_value(value.strip())
    if resumable(run_dir):
        cfg = from_dict(RunConfig, saved_config(run_dir, "a run's config"), complete=True)
        if preset is not None and cfg.preset not in (None, preset):
            raise ConfigError(f"{run_dir} is a run of preset {cfg.preset!r}, not {preset!r}; use another --out")
        if requested:
            changed = apply_overrides(cfg, requested)
            if changed != cfg:
                raise ConfigError(
                    f"{run_dir} already holds a run with another config; only --steps may change on resume "
                    f"(asked: {', '.join(requested)}). Use a new --out for a new run."
                )
    else:
        if preset is None and base is None:
            raise ConfigError(f"{run_dir} holds no run to resume: give --preset to start one")
        start = base if base is not None else run_config(preset)
        cfg = apply_overrides(start, requested) if requested else start
        if cfg.train.frozen_encoder:  # its encoder config, channels and latent statistics
            apply_frozen_encoder(cfg, cfg.train.frozen_encoder)
    if steps is not None:
        cfg.train.steps = steps
    if cfg.train.data is None:
        raise ConfigError("no dataset: pass --data (fashion-mnist, folder:PATH or skimage-photos)")
    return cfg


DISTILL_LR_SCALE = 0.25  # `epsvae distill`'s learning rates against the training recipe's
# `epsvae distill`'s steps against the training recipe's: 600 for eps-fmnist's 2000, the budget
# that met the goal on three teachers, where half of it (300) missed on two (docs/results.md)
DISTILL_STEPS_SCALE = 0.3


def prepare_distill(
    run_dir: str | Path,
    teacher: str | Path,
    preset: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
) -> RunConfig:
    """The config of a one-step distillation run of the exported ε-VAE `teacher` (`epsvae distill`).

    The student starts from the teacher's weights and keeps its encoder frozen (so its latents,
    and any generator trained on them, stay valid); it learns to reproduce, in one step from
    pure noise, the teacher's `train.distill_steps`-step decode (default: the teacher's own
    step count) from the same noise (MSE, the
    `distill` term), with the perceptual term against the data and the adversarial term on
    (image, noise) pairs at t = 1. The velocity term is off; the model decodes in 1 step by
    default. The training recipe is `preset`'s (default: the preset whose architecture the
    teacher has), as for `train`, at a quarter of its learning rates (`DISTILL_LR_SCALE`;
    `--set train.lr=...` and `train.disc_lr` set them) and for 0.3 of its steps
    (`DISTILL_STEPS_SCALE`; `steps` sets them).
    """
    from .presets import PRESETS, model_config, run_config

    teacher_path = Path(teacher)
    if (teacher_path / "model" / "config.json").is_file():  # a run directory: its exported model
        teacher_path = teacher_path / "model"
    teacher = str(teacher_path.resolve())
    if resumable(run_dir):
        cfg = prepare_run(run_dir, None, overrides, data, steps, batch_size)
        if cfg.train.distill_from != teacher:
            raise ConfigError(
                f"{run_dir} holds a run distilling {cfg.train.distill_from or 'nothing'}, not {teacher}; "
                "use another --out"
            )
        return cfg
    source = read_config(teacher)
    if source.kind != "epsilon":
        raise ConfigError(f"{teacher} holds a {source.kind!r} model; only an ε-VAE (kind 'epsilon') can be distilled")
    if preset is None:

        def shape(cfg) -> tuple:
            return (cfg.kind, cfg.image_channels, cfg.encoder, cfg.decoder, cfg.discriminator)

        matches = [name for name in PRESETS if shape(model_config(name)) == shape(source)]
        if not matches:
            raise ConfigError(f"{teacher} matches no preset's architecture: give --preset for the training recipe")
        preset = matches[0]
    base = run_config(preset)  # the recipe; the model is the teacher's, decoding in 1 step
    # a fine-tune of trained weights: a quarter of the recipe's learning rates (at eps-fmnist's
    # 2e-4 the distill term rose 3-7x during the warm-up on three teachers; at 5e-5 the
    # student met its teacher's 3 steps on all three: docs/results.md, "One-step decoding")
    base.train.lr *= DISTILL_LR_SCALE
    base.train.disc_lr *= DISTILL_LR_SCALE
    base.train.steps = max(1, round(base.train.steps * DISTILL_STEPS_SCALE))
    base.train.distill_from = teacher
    base.train.distill_steps = source.flow.steps  # the teacher's own (overridden by --teacher-steps)
    base.model = source
    base.model.flow.steps = 1
    base.train.loss.velocity_weight = 0.0
    return prepare_run(run_dir, preset, overrides, data, steps, batch_size, teacher, teacher, base=base)


def one_step_draws(draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Distillation: a training step's draws with every t = 1 (pure noise), so the one-step
    estimate x0_hat is exactly the model's 1-step decode from that noise."""
    return {**draws, "t": torch.ones_like(draws["t"])}


def distill_target(teacher: Autoencoder, steps: int | None):
    """Distillation's target for a forward output: the teacher's `steps`-step decode of the same
    latents from the same noise (x_t at t = 1 is the noise), under the caller's autocast."""

    def target(out) -> torch.Tensor:
        return teacher.decode(out.z, steps=steps, noise=out.x_t)

    return target


def init_weights(model: Autoencoder, directory: str | Path) -> None:
    """Load an exported model's weights into a new run's model (`train.init_from`): another resolution,
    learning rate or dataset; the architecture must match (a readable error says where it does not)."""
    source = read_config(directory)
    if source.kind != model.config.kind:
        raise ConfigError(f"{directory} holds a model of kind {source.kind!r}; this run trains {model.config.kind!r}")
    load_weights(model, Path(directory) / WEIGHTS_NAME)


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write the EMA weights of a run's latest checkpoint as a model directory."""
    cfg = from_dict(RunConfig, saved_config(run_dir, "a run's config"), complete=True)
    state = load_checkpoint(run_dir)
    if not isinstance(state.get("ema"), dict):
        raise ValueError(
            f"{Path(run_dir) / CHECKPOINT} holds no EMA weights ('ema'): not an epsvae training checkpoint"
        )
    model = build_model(cfg.model)
    check_state_dict(model, state["ema"], source=f"{Path(run_dir) / CHECKPOINT} [ema]")
    model.load_state_dict(state["ema"])
    return model.save_pretrained(out, **export_meta(cfg, state["step"]))


def export_meta(cfg: RunConfig, step: int) -> dict:
    """What an exported model records about its run: the step, and where a frozen encoder came from."""
    meta: dict = {"step": step}
    if cfg.train.frozen_encoder:
        meta["encoder_source"] = {"frozen": True, "path": cfg.train.frozen_encoder}
    if cfg.train.distill_from:
        meta["distilled_from"] = {"path": cfg.train.distill_from, "teacher_steps": cfg.train.distill_steps}
    return meta


# --------------------------------------------------------------------------- the loop


def train(
    run_dir: str | Path,
    cfg: RunConfig,
    minutes: float | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the run in `run_dir` up to `cfg.train.steps`, or for `minutes`. Returns a summary."""
    tc, channels = cfg.train, cfg.model.image_channels
    # ---- data first: a dataset that cannot be used (missing, wrong channels) writes nothing
    resolution = tc.resolution or cfg.model.image_size
    dataset = open_dataset(tc.data, "train", resolution, channels, strict=tc.strict_data)
    eng = Engine(run_dir, to_dict(cfg), tc, progress)
    try:
        return _train(eng, cfg, dataset, resolution, minutes)
    finally:
        eng.release()  # the run directory's lock, also after an error


def _train(eng: Engine, cfg: RunConfig, dataset, resolution: int, minutes: float | None) -> dict:
    tc, lc, kind = cfg.train, cfg.train.loss, cfg.model.kind
    channels = cfg.model.image_channels
    device, main, acc = eng.device, eng.main, eng.accelerator
    run_dir = eng.run_dir
    batches = StepBatches(len(dataset), tc.batch_size, eng.world, eng.rank, tc.seed)  # this rank's share per step

    # ---- networks
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model: Autoencoder = build_model(cfg.model)
    disc = build_discriminator(cfg.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    teacher = None
    if tc.distill_from:  # frozen; its multi-step decodes are the targets
        teacher = load_pretrained(tc.distill_from).eval().requires_grad_(False)

    def perceptual_net():
        return build_perceptual(lc.perceptual, tc.data, resolution, channels) if lc.perceptual_weight else None

    check = None
    if main:  # automatic feature networks train once; the other ranks wait for the cache
        perceptual = perceptual_net()
        if tc.eval_every:
            check = HeldOutCheck(tc.data, resolution, channels, tc.eval_images, device)
    acc.wait_for_everyone()
    if not main:
        perceptual = perceptual_net()
    # ---- speed: NHWC layout, fused Adam and compiled encoder/decoder on GPUs (train.channels_last, train.compile)
    memory_format = torch.channels_last if tc.switch("channels_last", device) else torch.contiguous_format
    if perceptual is not None:
        perceptual = perceptual.to(device, memory_format=memory_format)
    model.to(device, memory_format=memory_format)
    disc.to(device, memory_format=memory_format)
    adam = dict(betas=(tc.beta1, tc.beta2), eps=1e-8, fused=device.type == "cuda")
    if tc.frozen_encoder:  # only the decoder trains (the encoder's forward then records no graph)
        model.encoder.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr, **adam)
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr, **adam)
    if not eng.restore({"model": model, "disc": disc, "ema": ema, "opt": opt, "opt_d": opt_d}):
        if tc.init_from:
            init_weights(model, tc.init_from)
            if main:
                print(f"[train] weights initialised from {tc.init_from}")
        if tc.frozen_encoder:
            model.encoder.load_state_dict(read_frozen_encoder(tc.frozen_encoder).state)
            if main:
                print(f"[train] frozen encoder from {tc.frozen_encoder}; training the decoder only")
        ema.load_state_dict(model.state_dict())
    ema.to(device)
    target = None
    if teacher is not None:
        teacher.to(device)
        target = distill_target(teacher, tc.distill_steps)

    if tc.switch("compile", device):  # in place: state-dict keys and checkpoints stay as they are
        for module in (model.encoder, model.decoder, perceptual):  # not D: R1 needs a double backward
            if module is not None:
                module.compile()
    model, disc, opt, opt_d = acc.prepare(model, disc, opt, opt_d)
    raw_model: Autoencoder = acc.unwrap_model(model)
    raw_disc = acc.unwrap_model(disc)
    parts = {"model": raw_model, "disc": raw_disc, "ema": ema, "opt": opt, "opt_d": opt_d}

    # ---- feedback
    fixed = torch.stack([dataset[(i, i)][0] for i in range(min(8, len(dataset)))]).to(device)
    stream = BatchStream(dataset, batches, eng.step, tc.num_workers, pin_memory=device.type == "cuda")

    def sample_grid() -> None:
        if not main:
            return
        with torch.no_grad():
            z = ema.encode(fixed)
            if kind == "epsilon":
                g = torch.Generator(device=device)
                rows = [fixed] + [ema.decode(z, steps=s, generator=g.manual_seed(0)) for s in (1, 3)]
            else:
                rows = [fixed, ema.decode(z)]
        save_grid(rows, run_dir / "samples" / f"step{eng.step:07d}.png", scale=2 if fixed.shape[-1] <= 64 else 1)

    def validate() -> None:
        if check is not None:
            metrics, recon = check.measure(ema)
            eng.write_row(metrics, {"val/originals_reconstructions": torch.cat([check.x[:8], recon])})

    r1_w = losses.r1_weight(lc, (resolution, resolution), tc.batch_size)
    eng.start(minutes)
    if eng.step == 0:
        sample_grid()
    while eng.step < tc.steps and not eng.should_stop(minutes):
        gen = eng.seed_step()
        x, _, skipped = next(stream)  # this process's share of the global batch
        eng.note_skipped(skipped)
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        draws = eng.my_share(raw_model.draw(tc.batch_size, tuple(x.shape[-2:]), gen))
        if teacher is not None:
            draws = one_step_draws(draws)
        lr_scale = eng.warmup_lr([(opt, tc.lr), (opt_d, tc.disc_lr)])
        adv_scale = losses.adv_ramp(lc, eng.step)  # 0 before disc_start, then (ramping to) 1
        adv_on = adv_scale > 0

        # ---- autoencoder step (discriminator frozen), accumulated over micro-batches
        outs = []
        for i, (xm, dm) in eng.micro_batches(x, draws):
            with eng.no_sync(model, i):
                with acc.autocast():
                    loss, terms, out = losses.autoencoder_loss(
                        model, xm, lc, perceptual, raw_disc, adv_on, draws=dm, adv_scale=adv_scale,
                        target=target,
                    )  # fmt: skip
                eng.backward(loss)
            outs.append(type(out)(*(v.detach() for v in out)))
            eng.record({**terms, "loss": loss})
            if kind == "epsilon":
                eng.record_by_t("velocity_by_t", losses.velocity_mse_per_sample(out.v_pred, out.v_target), out.t)
        eng.step_optimizer(model, opt)
        eng.ema_update(ema, raw_model)
        # ---- discriminator step on the same pairs (autoencoder outputs detached)
        if adv_on:
            r1_step = r1_w > 0 and eng.step % lc.r1_every == 0
            for i, (xm,) in eng.micro_batches(x):
                with eng.no_sync(disc, i):
                    d_loss, d_terms = losses.discriminator_loss(
                        disc, xm, outs[i], lc, r1_step, acc.autocast, r1_weight=r1_w
                    )
                    eng.backward(d_loss)
                eng.record(d_terms)
            eng.step_optimizer(disc, opt_d)
        ckpt_due, sample_due = eng.end_step(tc.lr * lr_scale)
        if ckpt_due:
            eng.save(parts)
        if sample_due and main:
            sample_grid()
        if tc.eval_every and eng.step % tc.eval_every == 0:
            validate()

    eng.stop_clock()
    eng.save(parts)
    eng.exit_if_interrupted()  # SIGINT/SIGTERM: the checkpoint above holds this step
    if eng.step % tc.sample_every and main:
        sample_grid()
    if tc.eval_every and eng.step % tc.eval_every and eng.step > eng.start_step:
        validate()
    summary = eng.finish(raw_model)
    if eng.export_due(summary):
        ema_model = build_model(cfg.model)
        ema_model.load_state_dict({k: v.cpu() for k, v in ema.state_dict().items()})
        ema_model.save_pretrained(run_dir / "model", **export_meta(cfg, eng.step))
        print(f"[train] step {eng.step}: EMA weights exported to {run_dir / 'model'}")
    eng.close()
    return summary
