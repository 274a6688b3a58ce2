"""VAE vs ε-VAE on real photos: train on some photos, evaluate on crops of photos never trained on.

    python benchmarks/photos.py [--data-dir results/photos-data] [--presets vae-photo,eps-photo]
                                [--resolution 64] [--steps N] [--seeds 0,1,2] [--out results/photos]
                                [--set KEY=VALUE ...] [--quick] [--train-only]

The photos: Debian's `mate-backgrounds` nature photos (12, 1280-2560 px, in
/usr/share/backgrounds/mate/nature) and five colour photos bundled with scikit-image
(astronaut, chelsea, coffee, hubble_deep_field, rocket), copied into one folder by
`--data-dir` (once). The split is the folder spec's own, by photo: with `holdout=0.26`
the hash of each file name holds out four photos (Aqua, Blinds, GreenMeadow, coffee),
so every test crop comes from a photo no arm trained on. Training sees random patches
(`crop=patch`: side log-uniform between the resolution and the photo's short side,
scaled to the resolution); the test split is 128 fixed patches per held-out photo.
Each arm is evaluated at 1 and 3 decoding steps over the seeds: PSNR, SSIM, fd_indep (and
fd_domain beside it). `--presets vae-lite-B,eps-lite-B --resolution 128` (with `--set` for
the batch and steps) is the same comparison at the paper's lite size, for a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from _common import add_row, arm_row, parse, print_table, save

MATE = Path("/usr/share/backgrounds/mate/nature")
SKIMAGE = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "rocket")
SPEC = "folder:{dir}?crop=patch&per_image=128&holdout=0.26"


def prepare(data_dir: Path) -> Path:
    """Copy the photos into `data_dir` (once); returns it."""
    import numpy as np
    from PIL import Image

    data_dir.mkdir(parents=True, exist_ok=True)
    for jpg in sorted(MATE.glob("*.jpg")):
        if not (data_dir / jpg.name).is_file():
            shutil.copy(jpg, data_dir / jpg.name)
    try:
        from skimage import data as skdata
    except ImportError:
        skdata = None
    for name in SKIMAGE if skdata is not None else ():
        if not (data_dir / f"{name}.png").is_file():
            Image.fromarray(np.ascontiguousarray(getattr(skdata, name)()[..., :3])).save(data_dir / f"{name}.png")
    n = len(list(data_dir.iterdir()))
    if n < 4:
        raise SystemExit(
            f"{data_dir} has {n} photos: install Debian's mate-backgrounds (apt-get install mate-backgrounds) "
            "and scikit-image (pip install scikit-image)"
        )
    return data_dir


def main() -> None:
    def add(ap) -> None:
        ap.add_argument("--data-dir", default="results/photos-data", help="where the photos are copied")
        ap.add_argument("--presets", default="vae-photo,eps-photo")
        ap.add_argument("--resolution", type=int, default=None, help="training and test size (default: the preset's)")

    args, limit, seeds, out, result = parse(__doc__, "results/photos", add)
    data = SPEC.format(dir=prepare(Path(args.data_dir)).resolve())
    if args.quick:
        data = data.replace("per_image=128", "per_image=4")
    result["data"] = data
    size = [f"model.image_size={args.resolution}"] if args.resolution else []
    for preset in args.presets.split(","):
        row = arm_row(preset, preset, [f"train.data={data}", *size], args, limit, seeds)
        add_row(result, row)
        save(result, out / "photos.json")
    print_table(result)


if __name__ == "__main__":
    main()
