"""Decoding speed: ε-VAE-SD (B, M) at 1 and 3 steps against the Stable Diffusion VAE decoder.

    python benchmarks/decode_speed.py [--resolutions 256,512] [--batch N] [--seconds S]
                                      [--out results/decode_speed] [--quick]

All decoders take the same f8c4 latents (N, 4, H/8, W/8). The SD-VAE decoder is
diffusers' `AutoencoderKL` with the Stable Diffusion config (post-quant conv + decoder,
49.5M parameters) and random weights: speed does not depend on the weights, and neither
does ε-VAE's. Each arm runs in its own process, so peak memory is that arm's alone
(CUDA: max allocated; CPU: the process's peak resident memory). GPU runs use bf16
autocast; CPU runs fp32. PAPER.md section 5: ε-VAE-SD (B) at one step decodes at about
SD-VAE's speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import DEVICE, new_result, save

from epsvae.models import EpsilonVAE

ARMS = [("sd-vae", None, 1), ("eps-sd-B", "eps-sd-B", 1), ("eps-sd-B", "eps-sd-B", 3), ("eps-sd-M", "eps-sd-M", 1),
        ("eps-sd-M", "eps-sd-M", 3)]  # fmt: skip


def sd_vae_decoder():
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise SystemExit("the SD-VAE arm needs diffusers: pip install diffusers") from None
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
    )  # fmt: skip
    return vae.eval(), lambda z: vae.decode(z).sample


def measure(arm: str, preset: str | None, steps: int, res: int, batch: int, seconds: float) -> dict:
    """One arm in this process: images/s (median over timed batches) and peak memory."""
    torch.manual_seed(0)
    if preset is None:
        module, decode = sd_vae_decoder()
    else:
        module = EpsilonVAE.from_preset(preset).eval()
        for p in module.parameters():  # zero-initialised output layers would make decoding trivial
            if p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.02)
        gen = torch.Generator(device=DEVICE)
        decode = lambda z: module.decode(z, steps=steps, generator=gen.manual_seed(0))  # noqa: E731
    module.encoder = torch.nn.Identity()  # decoding only: the encoders would just take memory
    module.to(DEVICE)
    parts = [module.decoder] + ([module.post_quant_conv] if preset is None else [])
    params = sum(p.numel() for m in parts for p in m.parameters())
    z = torch.randn(batch, 4, res // 8, res // 8, device=DEVICE)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            decode(z)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run()  # warm-up
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        times.append(run())
    median = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # fmt: skip
    return {
        "arm": arm if preset is None else f"{arm} {steps}-step",
        "resolution": res,
        "batch": batch,
        "decoder_params_m": round(params / 1e6, 2),
        "batches_timed": len(times),
        "images_per_s": round(batch / median, 3),
        "peak_memory_gib": round(peak, 3),
        "memory_kind": "cuda max allocated" if DEVICE == "cuda" else "process peak RSS",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", default="256,512")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default: 16 on GPU, 1 on CPU)")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per arm")
    ap.add_argument("--out", default="results/decode_speed")
    ap.add_argument("--quick", action="store_true", help="smoke test: 64 px, one timed batch")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = ap.parse_args()
    batch = args.batch or (16 if DEVICE == "cuda" else 1)
    if args.one:
        arm, preset, steps, res = json.loads(args.one)
        print(json.dumps(measure(arm, preset, steps, res, batch, args.seconds)))
        return
    resolutions = [64] if args.quick else [int(r) for r in args.resolutions.split(",")]
    seconds = 0.0 if args.quick else args.seconds
    result = new_result()
    result.update({"batch": batch, "dtype": "bf16 autocast" if DEVICE == "cuda" else "fp32"})
    for res in resolutions:
        for arm, preset, steps in ARMS:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                json.dumps([arm, preset, steps, res]),
                "--batch",
                str(batch),
                "--seconds",
                str(seconds),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{arm} at {res}px failed:\n{proc.stderr[-2000:]}")
            result["rows"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            save(result, Path(args.out) / "decode_speed.json")
    print(f"\n{result['machine']}, {result['date']}, {result['dtype']}, batch {batch}: {result['command']}")
    print(f"{'decoder':<18}{'res':>5}{'params':>9}{'img/s':>10}{'vs SD-VAE':>11}{'peak GiB':>10}")
    for row in result["rows"]:
        base = next(r for r in result["rows"] if r["arm"] == "sd-vae" and r["resolution"] == row["resolution"])
        print(
            f"{row['arm']:<18}{row['resolution']:>5}{row['decoder_params_m']:>8.1f}M{row['images_per_s']:>10.3f}"
            f"{row['images_per_s'] / base['images_per_s']:>10.2f}x{row['peak_memory_gib']:>10.2f}"
        )


if __name__ == "__main__":
    main()
