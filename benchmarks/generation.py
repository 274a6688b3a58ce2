"""Generation on VAE vs ε-VAE latents: the same DiT and budget on each (PAPER.md section 5).

    python benchmarks/generation.py [--arms vae-1x,eps-1x,eps-2x,eps-2x-f8] [--dit-preset dit-fmnist]
                                    [--dit-steps N] [--n 10000] [--cfg 1.5] [--flow-steps 25]
                                    [--out results/generation] [--quick]

Each arm takes an autoencoder trained by benchmarks/compression.py (found in the shared
runs directory, or trained there with the presets' budget), copies its exported model
(eps-2x-f8: the paper's compression claim for generation, 2x compression through 4x4x4
latents with 4x fewer positions, the same DiT and patch size: 4 tokens instead of 16)
into OUT/ARM/ae, encodes the Fashion-MNIST training split with it (`encode_dataset`,
which records the latent statistics in that copy's config), trains the same DiT on the
latents, samples N images (balanced over the 10 classes, classifier-free guidance CFG,
FLOW_STEPS generator steps, ε-VAE decoding with its default steps) and measures the
Fréchet distance to the test split in the offline feature network's space (fd_domain, not
Inception FID) and the images/s of the whole pipeline. Writes OUT/generation.json, one
grid per arm (OUT/ARM/samples.png, a row per class) and prints a table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from _common import DEVICE, FID_FEATURES, QUICK, new_result, save, train_arm
from compression import ARMS as COMPRESSION_ARMS

from epsvae.evaluate import FD_NOTES
from epsvae.generation import (
    class_grid,
    evaluate_generation,
    generate,
    prepare_generator_run,
    train_generator,
)
from epsvae.latents import LatentDataset, encode_dataset, weights_digest  # noqa: E402

# name -> (autoencoder preset, overrides): the compression benchmark's arms, the same runs
# (the VAE at 2x, by fewer channels, is left out: the generation claim is about ε-VAE's 2x)
ARMS = {name: arm for name, arm in COMPRESSION_ARMS.items() if name != "vae-2x"}
QUICK_DIT = ["model.hidden=16", "model.depth=1", "model.heads=2", "train.batch_size=4", "train.log_every=1"]


def run_arm(name: str, args, out: Path) -> dict:
    preset, overrides = ARMS[name]
    ae_run, ae_cfg, ae_seconds, ae_steps = train_arm(args.runs, preset, overrides, None, args.quick)
    arm_dir = out / name
    ae_dir = arm_dir / "ae"
    latents = arm_dir / "latents"
    fresh = not (ae_dir / "model.safetensors").is_file() or weights_digest(ae_dir) != weights_digest(ae_run / "model")
    if fresh:  # a copy of the trained autoencoder (re-made if that run trained further): its latents, its stats
        shutil.rmtree(arm_dir, ignore_errors=True)
        shutil.copytree(ae_run / "model", ae_dir)
    if not (latents / "meta.json").is_file():
        encode_dataset(ae_dir, ae_cfg.train.data, latents, "train", device=DEVICE, progress=False,
                       limit=64 if args.quick else None)  # fmt: skip
    meta = LatentDataset(latents).meta
    dit_run = arm_dir / "dit"
    dit_over = (QUICK_DIT + ["train.sample_every=1", "train.sample_steps=2"]) if args.quick else []
    steps = 2 if args.quick else args.dit_steps
    cfg = prepare_generator_run(dit_run, args.dit_preset, str(ae_dir), str(latents), dit_over, steps)
    summary = train_generator(dit_run, cfg, progress=False)
    n = 20 if args.quick else args.n
    flow_steps = 2 if args.quick else args.flow_steps
    t0 = time.time()
    sampled = generate(dit_run, n, "all", args.cfg, flow_steps, None, args.seed, 250, DEVICE, progress=False)
    np.savez_compressed(arm_dir / "samples.npz", samples=sampled["samples"], labels=sampled["labels"])
    class_grid(sampled["samples"], sampled["labels"], arm_dir / "samples.png")
    report = evaluate_generation(sampled["samples"], ae_cfg.train.data, "test", FID_FEATURES,
                                 limit=64 if args.quick else None, device=DEVICE)  # fmt: skip
    c, h, w = ae_cfg.model.image_shape
    lc, lh, lw = ae_cfg.model.latent_shape
    return {
        "arm": name,
        "autoencoder_run": str(ae_run),
        "autoencoder_steps": ae_steps,
        "compression": c * h * w / (lc * lh * lw),
        "latent_shape": [lc, lh, lw],
        "latent_mean": meta["latent_mean"],
        "latent_std": meta["latent_std"],
        "encode_seconds": meta["seconds"],
        "dit_preset": cfg.preset,
        "dit_params": sum(v.numel() for v in _params(dit_run)),
        "dit_steps": summary["step"],
        "dit_seconds": summary["total_seconds"],
        "n_samples": n,
        "cfg": args.cfg,
        "flow_steps": flow_steps,
        "decode_steps": sampled["decode_steps"] if sampled["ae_kind"] == "epsilon" else None,
        "sample_seconds": round(time.time() - t0, 1),
        "images_per_s": sampled["images_per_s"],
        "fd_indep": report["fd_indep"],
        "fd_indep2": report.get("fd_indep2"),
        "fd_domain": report["fd_domain"],
        "fd_networks": report.get("fd_networks"),
        "n_real": report["n_real"],
    }


def _params(run: Path):
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors")).values()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--dit-preset", default="dit-fmnist")
    ap.add_argument("--dit-steps", type=int, default=None, help="DiT training steps (default: the preset's)")
    ap.add_argument("--n", type=int, default=10_000, help="samples per arm")
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--flow-steps", type=int, default=25, help="generator Euler steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/generation")
    ap.add_argument(
        "--runs", default=None, help="trained autoencoders, shared between benchmarks (default OUT/../runs)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny networks, 2 steps, 20 samples")
    args = ap.parse_args()
    out = Path(args.out)
    args.runs = Path(args.runs) if args.runs else out.parent / "runs"
    result = new_result()
    result["quick_overrides"] = QUICK if args.quick else None
    for name in args.arms.split(","):
        result["rows"].append(run_arm(name, args, out))
        save(result, out / "generation.json")
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    print(f"{'arm':<8}{'compr.':>7}{'latent':>10}{'DiT steps':>10}{'fd_indep':>10}{'fd_indep2':>10}{'fd_domain':>11}"
          f"{'img/s (e2e)':>13}")  # fmt: skip
    for r in result["rows"]:
        shape = "x".join(map(str, r["latent_shape"]))
        print(f"{r['arm']:<8}{r['compression']:>7g}{shape:>10}{r['dit_steps']:>10}{r['fd_indep']:>10.4f}"
              f"{r['fd_indep2']:>10.4f}{r['fd_domain']:>11.4f}{r['images_per_s']:>13.1f}")  # fmt: skip
    print("\n".join(FD_NOTES.values()))


if __name__ == "__main__":
    main()
