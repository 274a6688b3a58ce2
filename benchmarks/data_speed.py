"""Data loading speed: images/s of folder JPEG decoding and cropping against the number of workers.

    python benchmarks/data_speed.py [--resolution 256] [--workers 0,1,2,4,8] [--files 256]
                                    [--batch 64] [--seconds 10] [--gpu-json docs/gpu_check_....json]
                                    [--out results/data_speed] [--quick]

Builds an ImageNet-like folder once (JPEG, quality 90, 500x375 views cut from the
mate-backgrounds and scikit-image photos), then runs the training's own loader
(`epsvae.data.BatchStream` over an `ImageFolder`, random crops and flips, `crop=resize`)
for each worker count and reports images/s; the same for `crop=patch` on the large photos
themselves (decoded once, then cropped from memory). Beside it, the training's
consumption: images/s of each preset from a gpu_check JSON (`--gpu-json`), so the table
says how many workers keep a GPU fed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import new_result, save

from epsvae.data import BatchStream, StepBatches, open_dataset

PHOTOS = Path("/usr/share/backgrounds/mate/nature")


def make_folder(root: Path, n: int) -> Path:
    """`n` 500x375 JPEGs cut from the photos at random places and scales (once)."""
    from PIL import Image

    if root.is_dir() and len(list(root.glob("*.jpg"))) >= n:
        return root
    root.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    if not sources:
        from skimage import data as skdata

        sources = [Image.fromarray(getattr(skdata, k)()[..., :3]) for k in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    for i in range(n):
        src = sources[i % len(sources)]
        scale = rng.uniform(0.2, 1.0) * min(src.width / 500, src.height / 375)
        w, h = int(500 * scale), int(375 * scale)
        left, top = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        src.resize((500, 375), Image.BICUBIC, box=(left, top, left + w, top + h)).save(
            root / f"{i:05d}.jpg", quality=90
        )
    return root


def loader_speed(spec: str, resolution: int, workers: int, batch: int, seconds: float) -> dict:
    ds = open_dataset(spec, "train", resolution, 3)
    stream = BatchStream(ds, StepBatches(len(ds), batch, seed=0), 0, workers)
    next(stream)  # workers start, caches fill
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        x, _, _ = next(stream)
        n += len(x)
    dt = time.perf_counter() - t0
    return {
        "spec": spec,
        "workers": workers,
        "resolution": resolution,
        "batch": batch,
        "images_per_s": round(n / dt, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--workers", default="0,1,2,4,8")
    ap.add_argument("--files", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--data-dir", default="results/data-speed-jpegs")
    ap.add_argument("--gpu-json", help="a gpu_check JSON: the training's images/s per preset, for comparison")
    ap.add_argument("--out", default="results/data_speed")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    files, seconds, workers = (8, 0.2, [0, 1]) if args.quick else (args.files, args.seconds, args.workers)
    workers = [int(w) for w in str(workers).split(",")] if isinstance(workers, str) else workers
    folder = make_folder(Path(args.data_dir), files)
    result = new_result()
    result.update(cpu_count=os.cpu_count(), files=files)
    specs = [f"folder:{folder.resolve()}"]
    if PHOTOS.is_dir():
        specs.append(f"folder:{PHOTOS}?crop=patch&per_image=64&holdout=0")
    for spec in specs:
        for w in workers:
            row = loader_speed(spec, args.resolution, w, args.batch, seconds)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            save(result, Path(args.out) / "data_speed.json")
    if args.gpu_json:
        gpu = json.loads(Path(args.gpu_json).read_text())
        result["consumption"] = [
            {k: r[k] for k in ("preset", "variant", "resolution", "images_per_s")} for r in gpu.get("train", [])
        ]
        save(result, Path(args.out) / "data_speed.json")
    print(f"\n{result['machine']} ({os.cpu_count()} CPUs), {result['date']}: {result['command']}")
    for row in result["rows"]:
        kind = "patches of large photos" if "crop=patch" in row["spec"] else "500x375 JPEGs"
        print(f"{kind:<26}{row['resolution']:>5} px  workers {row['workers']:>2}: {row['images_per_s']:>8} img/s")
    for c in result.get("consumption", []):
        print(f"training {c['preset']} ({c['variant']}) @ {c['resolution']} px consumes {c['images_per_s']} img/s")


if __name__ == "__main__":
    main()
