"""Decoding memory and time against image size: untiled, tiled, and batch slicing.

    python benchmarks/decode_memory.py [--model DIR | --preset eps-sd-B] [--sizes 256,512,1024,2048]
                                       [--steps 1,3] [--tile-size 256] [--tile-overlap PX] [--max-global N]
                                       [--norm-passes N] [--max-untiled 1024] [--slice-batch 16]
                                       [--slice-size 256] [--only untiled|tiled] [--no-trim]
                                       [--tiled-image SIZE-STEPS-tiled-b1.npy] [--keep-images]
                                       [--out results/decode_memory] [--quick]
    python benchmarks/decode_memory.py --plot A/decode_memory.json B/decode_memory.json --out DIR  # merge, plot

Each arm (size, steps, untiled or tiled) decodes one image in its own process, so its peak
memory is its own: the process's peak resident memory (CPU) or max allocated (CUDA), with
the resident memory before decoding (torch and the weights) reported beside it. Untiled arms
run up to --max-untiled px; where both ran, the tiled image is compared with the untiled one
decoded from the same latents and the same noise (PSNR over [-1, 1], and max abs difference).
Tiling is `EpsilonVAE.decode(tiling=TileConfig(...))` (see epsvae.tiling): exact where no
attention sits at a tiled level and the GroupNorm statistics have converged (--norm-passes
caps the passes; the number run is recorded). The slicing arms decode a batch of
--slice-batch at --slice-size one image at a time, against batch 1. --only runs just the
untiled or the tiled arms (no slicing arms); --tiled-image compares the untiled arm of its
size and steps with a tiled image kept from an earlier run (the latents and the noise are
seeded, so they are the same), for sizes where one run would take too long.

Without --model the preset's weights are random, with its zero-initialised layers drawn
small so that decoding is not trivial: memory and time do not depend on the weights, but
the tiled-vs-untiled comparison is then one of a random network. Latents are N(0, 1).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import DEVICE, new_result, save

from epsvae.models import EpsilonVAE, load_pretrained
from epsvae.tiling import TileConfig, receptive_margin, split_level, windowed_levels

QUICK = ["encoder.channels=4", "decoder.channels=4", "decoder.head_channels=4"]


def build(args: argparse.Namespace) -> EpsilonVAE:
    torch.manual_seed(0)
    if args.model:
        return load_pretrained(args.model, DEVICE).eval()
    model = EpsilonVAE.from_preset(args.preset, QUICK if args.quick else None).eval()
    for p in model.parameters():  # zero-initialised output layers would make decoding trivial
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.02)
    return model.to(DEVICE)


def peak_gib() -> float:
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(args: argparse.Namespace, arm: dict, image_path: Path) -> dict:
    """One arm in this process: decode, time it, record peak memory, save the image for comparison."""
    import epsvae.tiling as tiling_module

    passes = [0]
    measured = tiling_module.NormState.measured

    def counted(self):  # one call per pass over the tiles (phases A and C), over all network calls
        passes[0] += 1
        return measured(self)

    tiling_module.NormState.measured = counted
    model = build(args)
    model.encoder = torch.nn.Identity()  # decoding only
    f = model.downsample
    cz = model.config.encoder.latent_channels
    size, batch = arm["size"], arm["batch"]
    z = torch.randn(batch, cz, size // f, size // f, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    tiling = None
    if arm["tiled"]:
        tiling = TileConfig(args.tile_size, args.tile_overlap, args.max_global, args.norm_passes,
                            trim_host=not args.no_trim)  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        x = model.decode(z, steps=arm["steps"], generator=torch.Generator().manual_seed(1), tiling=tiling,
                         batch_size=1 if arm["sliced"] else None)  # fmt: skip
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    np.save(image_path, x[0].float().cpu().numpy())
    row = {**arm, "seconds": round(seconds, 2), "peak_gib": round(peak_gib(), 3), "rss_before_gib": round(before, 3),
           "memory_kind": "cuda max allocated" if DEVICE == "cuda" else "process peak RSS"}  # fmt: skip
    if arm["tiled"]:
        s = split_level(model.decoder, size, size, args.max_global)
        row["split_level"], row["receptive_margin"] = s, receptive_margin(model.decoder, s)
        row["windowed_attention_levels"], row["norm_passes_run"] = windowed_levels(model.decoder, s), passes[0]
        row["trim_host"] = tiling.trim_host
    return row


def compare(a: Path, b: Path) -> dict:
    x, y = np.load(a), np.load(b)
    mse = float(((x - y) ** 2).mean())
    return {"psnr_vs_untiled": round(10 * math.log10(4 / mse), 2) if mse else float("inf"),
            "max_abs_vs_untiled": float(np.abs(x - y).max())}  # fmt: skip


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r for r in result["rows"] if r["batch"] == 1 and not r["sliced"] and "error" not in r]
    kind_of = lambda r: (r["tiled"], r.get("norm_passes_cap") or 0, bool(r.get("trim_host")))  # noqa: E731
    for tiled, cap, lean in sorted({kind_of(r) for r in rows}):  # cap 0: converged (exact)
        for steps in sorted({r["steps"] for r in rows}):
            pts = sorted(
                (r["size"], r["peak_gib"], r["seconds"])
                for r in rows
                if kind_of(r) == (tiled, cap, lean) and r["steps"] == steps
            )
            if not pts:
                continue
            kind = ("tiled" + (f", norm passes <= {cap}" if cap else "")) if tiled else "untiled"
            kind += (", lean heap" if lean else ", glibc defaults") if tiled else ""
            label = f"{kind}, {steps} step{'s' if steps > 1 else ''}"
            style = ((":v" if lean else ":^") if cap else "-o") if tiled else "--s"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
    axes[0].axhline(2.0, color="grey", lw=0.8, ls=":", label="2 GiB goal")
    sizes = sorted({r["size"] for r in rows})
    for ax, name in zip(axes, ("peak memory (GiB)", "decode time (s)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("image side (px)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']} decoding, batch 1 ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def arms(args: argparse.Namespace, sizes: list[int], steps: list[int], slicing: bool = True) -> list[dict]:
    out = []
    for size in sizes:
        for s in steps:
            if size <= args.max_untiled:
                out.append({"size": size, "steps": s, "tiled": False, "batch": 1, "sliced": False})
            out.append({"size": size, "steps": s, "tiled": True, "batch": 1, "sliced": False})
    for batch, sliced in ((1, False), (args.slice_batch, True)) if slicing else ():
        out.append({"size": args.slice_size, "steps": 1, "tiled": False, "batch": batch, "sliced": sliced})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="exported ε-VAE directory (default: --preset with random weights)")
    ap.add_argument("--preset", default="eps-sd-B")
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--steps", default="1,3")
    ap.add_argument("--tile-size", type=int, default=256, help="tile side (px); small tiles bound CPU memory")
    ap.add_argument("--tile-overlap", type=int, default=None, help="default: the receptive margin (exact)")
    ap.add_argument("--max-global", type=int, default=TileConfig.max_global, help="positions of the map run whole")
    ap.add_argument("--norm-passes", type=int, default=None, help="cap on GroupNorm passes (default: converge)")
    ap.add_argument("--max-untiled", type=int, default=1024, help="largest size decoded untiled")
    ap.add_argument("--slice-batch", type=int, default=16)
    ap.add_argument("--slice-size", type=int, default=256)
    ap.add_argument("--no-trim", action="store_true", help="keep freed heap pages between tiles (glibc's default)")
    ap.add_argument("--only", choices=("untiled", "tiled"), help="run only these arms (no slicing arms)")
    ap.add_argument("--tiled-image", help="SIZE-STEPS-tiled-b1.npy kept from an earlier run: compared with untiled")
    ap.add_argument("--keep-images", action="store_true", help="keep the decoded images (OUT/images/*.npy)")
    ap.add_argument("--out", default="results/decode_memory")
    ap.add_argument("--quick", action="store_true", help="smoke test: a tiny network at 64 and 128 px, 1 step")
    ap.add_argument("--plot", nargs="+", metavar="JSON", help="merge these runs' decode_memory.json and plot them")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = ap.parse_args()
    if args.plot:
        parts = [json.loads(Path(p).read_text()) for p in args.plot]
        merged = {**parts[0], "command": [p["command"] for p in parts], "rows": []}
        key = lambda r: (r["size"], r["steps"], r["tiled"], r["batch"], r["sliced"], r.get("norm_passes_cap"),  # noqa: E731
                         bool(r.get("trim_host")))  # fmt: skip
        for part in parts:  # rows written before the cap was recorded per row take their run's cap
            rows = [{**r, "norm_passes_cap": r.get("norm_passes_cap", part.get("norm_passes_cap"))} if r["tiled"] else r
                    for r in part["rows"]]  # fmt: skip
            earlier = {key(r) for r in merged["rows"]}  # an arm an earlier run measured keeps that run's row
            merged["rows"] += [r for r in rows if key(r) not in earlier]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save(merged, Path(args.out) / "decode_memory.json")
        plot(merged, Path(args.out) / "decode_memory.png")
        return
    if args.quick:
        args.sizes, args.steps, args.tile_size, args.max_global = "64,128", "1", 32, 16 * 16
        args.slice_batch, args.slice_size = 4, 64
    out = Path(args.out)
    if args.one:
        arm, image = json.loads(args.one)
        print(json.dumps(measure(args, arm, Path(image))))
        return
    result = new_result()
    result.update({"model": args.model or args.preset + (" (quick)" if args.quick else ""), "dtype": "fp32",
                   "tile_size": args.tile_size, "norm_passes_cap": args.norm_passes})  # fmt: skip
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    passthrough = [a for a in sys.argv[1:] if a != "--quick"] + (["--quick"] if args.quick else [])
    todo = arms(args, [int(s) for s in args.sizes.split(",")], [int(s) for s in args.steps.split(",")], not args.only)
    for arm in [a for a in todo if not args.only or a["tiled"] == (args.only == "tiled")]:
        name = f"{arm['size']}-{arm['steps']}-{'tiled' if arm['tiled'] else 'untiled'}-b{arm['batch']}"
        cmd = [sys.executable, __file__, *passthrough, "--one", json.dumps([arm, str(images / f"{name}.npy")])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:  # e.g. killed for memory: recorded, the other arms go on
            row = {**arm, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        if arm["tiled"]:
            row["norm_passes_cap"] = args.norm_passes
        if arm["tiled"] and "error" not in row and (images / f"{arm['size']}-{arm['steps']}-untiled-b1.npy").is_file():
            row.update(compare(images / f"{name}.npy", images / f"{arm['size']}-{arm['steps']}-untiled-b1.npy"))
        kept = Path(args.tiled_image or "")
        if not arm["tiled"] and "error" not in row and kept.name == f"{arm['size']}-{arm['steps']}-tiled-b1.npy":
            tiled = compare(kept, images / f"{name}.npy")  # the same latents and noise, tiled in an earlier run
            row.update({"tiled_image": str(kept), **{k.replace("_vs", "_tiled_vs"): v for k, v in tiled.items()}})
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        save(result, out / "decode_memory.json")
    plot(result, out / "decode_memory.png")  # several runs' JSONs: `--plot A.json B.json --out DIR`
    if not args.keep_images:
        for p in images.glob("*.npy"):
            p.unlink()
        images.rmdir()


if __name__ == "__main__":
    main()
