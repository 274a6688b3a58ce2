"""GPU check: bf16 training-step throughput of the paper's presets, achieved TFLOP/s, memory.

    python benchmarks/gpu_check.py [--budget-s 240] [--out gpu_check.json]

For each preset it runs the real training step (epsvae.losses.autoencoder_loss, then
discriminator_loss with lazy R1, Adam on both, bf16 autocast) on random images,
counts the FLOPs of one step with torch.utils.flop_counter, times steps with CUDA
synchronisation, and reports images/s, TFLOP/s, the fraction of the card's bf16
peak (both the datasheet's dense figure and a bf16 matmul measured in the same run),
and peak memory. The perceptual term uses torchvision's VGG16 feature layers with
random weights where torchvision exists (its cost does not depend on the weights;
LPIPS's own weights cannot be fetched offline), else it is left out and the output
says so. It ends with a short end-to-end `train()` run of eps-lite-B on
skimage-photos through Accelerate (bf16), to check the engine itself on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from epsvae.config import TrainConfig  # noqa: E402
from epsvae.losses import autoencoder_loss, discriminator_loss  # noqa: E402
from epsvae.models import EpsilonVAE, build_discriminator  # noqa: E402

DATASHEET_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class VGGStandIn(torch.nn.Module):
    """LPIPS-shaped distance over VGG16's five feature slices (random weights: cost only)."""

    def __init__(self):
        super().__init__()
        import torchvision

        feats = torchvision.models.vgg16().features
        cuts = [0, 4, 9, 16, 23, 30]
        self.slices = torch.nn.ModuleList(feats[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True))
        self.requires_grad_(False)

    def forward(self, x, y):
        if x.shape[1] == 1:  # grayscale presets (the CPU smoke test), as LPIPS does
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        d = 0
        for s in self.slices:
            x, y = s(x), s(y)
            nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + (nx - ny).pow(2).sum(1).mean((1, 2))
        return d


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench_preset(name: str, batch: int, seconds: float, perceptual) -> dict:
    torch.manual_seed(0)
    model = EpsilonVAE.from_preset(name).to(DEVICE).train()
    for p in model.parameters():  # non-zero output convs, as after some training
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    disc = build_discriminator(model.config).to(DEVICE)
    lc = TrainConfig().loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.0, 0.999))
    c, s = model.config.image_channels, model.config.image_size
    x = torch.rand(batch, c, s, s, device=DEVICE) * 2 - 1
    autocast = lambda: torch.autocast(DEVICE, dtype=torch.bfloat16)  # noqa: E731

    def step(i: int) -> None:
        with autocast():
            loss, _, out = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d_loss, _ = discriminator_loss(disc, x, out, lc, r1_step=(i % lc.r1_every == 0), autocast=autocast)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    from torch.utils.flop_counter import FlopCounterMode

    # FLOPs of one step without R1 (the counter's module hooks cannot follow R1's
    # double backward); TFLOP/s comes from a phase that times exactly those steps, and
    # images/s from a phase with the recipe's lazy R1 (every r1_every steps).
    with FlopCounterMode(display=False) as counter:
        step(1)
    flops_per_step = counter.get_total_flops()
    for i in range(4):
        step(i)
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def timed(seconds: float, with_r1: bool) -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n % lc.r1_every:
            step(n if with_r1 else 1)
            n += 1
            if n % lc.r1_every == 0:
                sync()
        sync()
        return n, time.perf_counter() - t0

    n_plain, dt_plain = timed(seconds / 2, with_r1=False)
    n, dt = timed(seconds / 2, with_r1=True)
    return {
        "preset": name,
        "resolution": s,
        "batch": batch,
        "steps_timed": n,
        "seconds": round(dt, 2),
        "images_per_s": round(n * batch / dt, 1),
        "flops_per_step": flops_per_step,
        "tflops": round(flops_per_step * n_plain / dt_plain / 1e12, 1),
        "images_per_s_without_r1": round(n_plain * batch / dt_plain, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
        "params_decoder_m": round(sum(p.numel() for p in model.decoder.parameters()) / 1e6, 2),
    }


def engine_check(preset: str = "eps-lite-B", steps: int = 20, batch: int = 16) -> dict:
    """A short real run through Accelerate on skimage-photos crops (bf16 on a GPU)."""
    from epsvae.presets import run_config
    from epsvae.train import train

    cfg = run_config(preset)
    cfg.train.data, cfg.train.steps, cfg.train.batch_size = "skimage-photos", steps, batch
    cfg.model.image_channels = 3  # the photos are RGB (the smoke test's preset is grayscale)
    cfg.train.loss.perceptual, cfg.train.loss.disc_start, cfg.train.log_every = "none", 5, 10
    with tempfile.TemporaryDirectory() as d:
        summary = train(d, cfg, progress=False)
        stats = [json.loads(line) for line in (Path(d) / "stats.jsonl").read_text().splitlines()]
        stats = [row for row in stats if "loss" in row]  # training rows, not validation ones
        exported = (Path(d) / "model" / "model.safetensors").is_file()
    return {"summary": summary, "last_stats": stats[-1], "exported": exported}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=240, help="total seconds of timed training steps")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test of this script on tiny settings")
    args = ap.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (or --smoke for a CPU smoke test)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in DATASHEET_BF16_DENSE.items() if k in name), None)
    try:
        perceptual = VGGStandIn().to(DEVICE)
        perc_note = "VGG16 features, random weights (LPIPS-shaped cost)"
    except ImportError:
        perceptual, perc_note = None, "none (torchvision missing)"
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "perceptual": perc_note,
        "matmul_bf16_tflops_measured": round(matmul_tflops(512 if args.smoke else 8192) / 1e12, 3),
        "datasheet_bf16_dense_tflops": peak / 1e12 if peak else None,
        "runs": [],
    }
    plan = [("eps-fmnist", 4)] if args.smoke else [("eps-lite-B", 64), ("eps-sd-M", 16)]
    for preset, batch in plan:
        r = bench_preset(preset, batch, args.budget_s / len(plan), perceptual)
        r["fraction_of_measured_matmul"] = round(r["tflops"] / result["matmul_bf16_tflops_measured"], 3)
        r["fraction_of_datasheet"] = round(r["tflops"] * 1e12 / peak, 3) if peak else None
        result["runs"].append(r)
        print(json.dumps(r), flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    result["engine_check"] = engine_check("eps-fmnist", 3, 2) if args.smoke else engine_check()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name}, torch {torch.__version__}, perceptual: {perc_note}")
    print(f"measured bf16 matmul: {result['matmul_bf16_tflops_measured']} TFLOP/s")
    print(
        f"{'preset':<12}{'res':>5}{'batch':>7}{'img/s':>9}{'TFLOP/s':>9}{'of matmul':>11}{'of spec':>9}{'peak GiB':>10}"
    )
    for r in result["runs"]:
        print(
            f"{r['preset']:<12}{r['resolution']:>5}{r['batch']:>7}{r['images_per_s']:>9}{r['tflops']:>9}"
            f"{r['fraction_of_measured_matmul']:>11}{str(r['fraction_of_datasheet']):>9}{str(r['peak_memory_gib']):>10}"
        )
    e = result["engine_check"]
    print(
        f"engine: {e['summary']['step']} steps, {e['summary']['mixed_precision']}, exported={e['exported']}, "
        f"last loss {e['last_stats'].get('loss'):.4f}"
    )


if __name__ == "__main__":
    main()
