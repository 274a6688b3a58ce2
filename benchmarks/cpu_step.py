"""The quickstart's training step on the CPU, in variants: where its time goes and what makes it cheaper.

    python benchmarks/cpu_step.py [--preset eps-fmnist] [--batch 64] [--steps 12]
                                  [--variants default,channels_last,compile,compile+channels_last]
                                  [--threads 0] [--profile | --profile-all] [--before-gan] [--out results/cpu_step]

One step is what `epsvae train` runs once the GAN is on: `autoencoder_loss` (velocity +
perceptual on x0_hat with the preset's own perceptual network + adversarial), Adam, then
`discriminator_loss` with lazy R1 (every `r1_every` steps), Adam, and the EMA update. It
is timed in three phases (autoencoder forward+backward+Adam, discriminator step, R1 step)
on real Fashion-MNIST images. Each variant changes only how the same arithmetic runs
(memory layout, torch.compile of encoder, decoder and perceptual network, as `epsvae
train` does on CUDA); the losses of the first step are printed so that equal arithmetic
can be checked. --threads 0 keeps torch's default. --profile adds the operators' own CPU
time for the first variant, --profile-all for every variant, with the convolutions' time
by input shape. --before-gan times the step as it runs before `disc_start`
(no adversarial term, no discriminator step). Timings need an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import new_result, save  # noqa: E402

from epsvae.config import RunConfig, apply_overrides, parse_value  # noqa: E402
from epsvae.data import load_batch, open_dataset  # noqa: E402
from epsvae.losses import autoencoder_loss, discriminator_loss  # noqa: E402
from epsvae.models import build_discriminator, build_model  # noqa: E402
from epsvae.perceptual import build_perceptual  # noqa: E402
from epsvae.presets import run_config  # noqa: E402

VARIANTS = {  # name -> (channels_last, compile, bf16 autocast)
    "default": (False, False, False),
    "channels_last": (True, False, False),
    "compile": (False, True, False),
    "compile+channels_last": (True, True, False),
    "bf16": (False, False, True),
    "bf16+channels_last": (True, False, True),
}


def setup(cfg: RunConfig, batch: int, variant: str, gan: bool = True):
    tc, lc = cfg.train, cfg.train.loss
    channels_last, compiled, bf16 = VARIANTS[variant]

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(tc.seed)
    model, disc = build_model(cfg.model), build_discriminator(cfg.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    perceptual = build_perceptual(lc.perceptual, tc.data, cfg.model.image_size, cfg.model.image_channels)
    for m in (model, disc, perceptual):
        if m is not None:
            m.to(memory_format=fmt)
    if compiled:
        for m in (model.encoder, model.decoder, perceptual):
            if m is not None:
                m.compile()
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr, betas=(tc.beta1, tc.beta2))
    data = open_dataset(tc.data, "train", cfg.model.image_size, cfg.model.image_channels)
    x, _ = load_batch(data, list(range(batch)))
    x = x.contiguous(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    times = {"autoencoder": 0.0, "discriminator": 0.0, "r1": 0.0, "ema": 0.0}

    def step(r1: bool, record: bool) -> dict:
        t0 = time.perf_counter()
        with autocast():
            loss, terms, out = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=gan, generator=gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        d_loss = torch.zeros(())
        if gan:
            d_loss, d_terms = discriminator_loss(disc, x, out, lc, r1_step=r1, autocast=autocast)
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - tc.ema)
        t3 = time.perf_counter()
        if record:
            times["autoencoder"] += t1 - t0
            if gan:
                times["r1" if r1 else "discriminator"] += t2 - t1
            times["ema"] += t3 - t2
        return {"loss": loss.item(), "d_loss": d_loss.item()}

    return step, times


def run_variant(cfg: RunConfig, batch: int, variant: str, steps: int, profile: bool, gan: bool = True) -> dict:
    r1_every = cfg.train.loss.r1_every
    step, times = setup(cfg, batch, variant, gan)
    t0 = time.perf_counter()
    first = step(r1=True, record=False)  # compiles (forward, backward, the R1 path) and warms up
    step(r1=False, record=False)
    warmup = time.perf_counter() - t0
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        prof = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        prof.__enter__()
    t0 = time.perf_counter()
    for i in range(steps):
        step(r1=i % r1_every == 0, record=True)
    total = time.perf_counter() - t0
    row = {
        "variant": variant,
        "gan": gan,
        "steps": steps,
        "warmup_seconds": round(warmup, 1),
        "seconds_per_step": round(total / steps, 4),
        "steps_in_10_minutes_after_warmup": int((600 - warmup) / (total / steps)),
        "phase_seconds_per_step": {k: round(v / steps, 4) for k, v in times.items()},
        "first_step_losses": first,
    }
    if prof is not None:
        prof.__exit__(None, None, None)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        own = sum(e.self_cpu_time_total for e in events) or 1
        row["top_operators"] = [
            {"op": e.key, "percent": round(100 * e.self_cpu_time_total / own, 1), "calls": e.count} for e in events[:15]
        ]
        convs = {}  # (forward or backward, input and weight shapes) -> own CPU ms per step
        for e in prof.key_averages(group_by_input_shape=True):
            if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward"):
                key = ("backward" if "backward" in e.key else "forward", str(e.input_shapes[:2]))
                convs[key] = convs.get(key, 0.0) + e.self_cpu_time_total / 1000 / steps
        row["convolutions_ms_per_step"] = [
            {"pass": k[0], "shapes": k[1], "ms": round(v, 2)} for k, v in sorted(convs.items(), key=lambda kv: -kv[1])
        ]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="eps-fmnist")
    ap.add_argument("--batch", type=int, default=0, help="0: the preset's batch")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per variant (a multiple of r1_every)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="profile the first variant")
    ap.add_argument("--profile-all", action="store_true", help="profile every variant")
    ap.add_argument("--before-gan", action="store_true", help="the step before disc_start (no GAN)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="results/cpu_step")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k.strip(): parse_value(v.strip()) for k, _, v in (item.partition("=") for item in args.set)}
    cfg = apply_overrides(run_config(args.preset), overrides)
    batch = args.batch or cfg.train.batch_size
    result = new_result()
    gan = not args.before_gan
    result.update({"preset": args.preset, "batch": batch, "threads": torch.get_num_threads(), "gan": gan})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, variant in enumerate(args.variants.split(",")):
        profile = args.profile_all or (args.profile and i == 0)
        row = run_variant(cfg, batch, variant, args.steps, profile, gan)
        result["rows"].append(row)
        save(result, out / "cpu_step.json")
        ph = row["phase_seconds_per_step"]
        print(f"{variant:24s} {row['seconds_per_step']:.3f} s/step (autoencoder {ph['autoencoder']:.3f}, "
              f"disc {ph['discriminator']:.3f}, R1 {ph['r1']:.3f}, EMA {ph['ema']:.4f}); warm-up "
              f"{row['warmup_seconds']} s; first losses {row['first_step_losses']}", flush=True)  # fmt: skip
        for op in row.get("top_operators", []):
            print(f"    {op['percent']:5.1f}%  {op['calls']:6d}  {op['op']}")


if __name__ == "__main__":
    main()
