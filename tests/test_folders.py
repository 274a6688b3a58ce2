"""Your own images: folder specs, held-out splits, image modes, and every command on a folder of photos."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from epsvae import folders
from epsvae.cli import main
from epsvae.folders import DataError, FolderSpec, ImageFolder, read_image

from helpers import TINY, write_photo_folder


def test_folder_spec_options_and_errors(tmp_path):
    spec = FolderSpec.parse(f"folder:{tmp_path}?holdout=0.25&crop=patch&per_image=8&cache_mb=0")
    assert (spec.root, spec.holdout, spec.crop, spec.per_image, spec.cache_mb) == (tmp_path, 0.25, "patch", 8, 0)
    assert FolderSpec.parse(f"folder:{tmp_path}") == FolderSpec(tmp_path)  # defaults: 10% held out, resize
    with pytest.raises(DataError, match="unknown folder option 'holdot' in .*; valid: holdout"):
        FolderSpec.parse(f"folder:{tmp_path}?holdot=0.2")
    with pytest.raises(DataError, match="holdout must be in"):
        FolderSpec.parse(f"folder:{tmp_path}?holdout=1.5")
    with pytest.raises(DataError, match="per_image must be an integer, got 'x'"):
        FolderSpec.parse(f"folder:{tmp_path}?per_image=x")
    with pytest.raises(DataError, match="crop must be"):
        FolderSpec.parse(f"folder:{tmp_path}?crop=zoom")


def test_holdout_split_is_disjoint_stable_and_independent_of_other_files(tmp_path):
    root = write_photo_folder(tmp_path / "p", n=50)
    train, test = ImageFolder(root, 16, split="train"), ImageFolder(root, 16, split="test")
    assert set(train.files).isdisjoint(test.files) and len(train.files) + len(test.files) == 50
    assert 1 <= len(test.files) <= 12  # about 10%
    assert ImageFolder(root, 16, split="test").files == test.files  # deterministic
    write_photo_folder(tmp_path / "more", n=20)  # other files joining the folder keep the old ones' sides
    for f in (tmp_path / "more").iterdir():
        f.rename(root / f"new_{f.name}")
    assert set(test.files) <= set(ImageFolder(root, 16, split="test").files)
    assert set(ImageFolder(root, 16, split="test").files).isdisjoint(train.files)
    half = ImageFolder(f"folder:{root}?holdout=0.5", 16, split="test")
    assert len(half.files) > len(ImageFolder(root, 16, split="test").files)
    with pytest.raises(DataError, match="no held-out files"):
        ImageFolder(f"folder:{root}?holdout=0", 16, split="test")
    # train/ and val/ sub-folders are the splits, with class labels below them
    explicit = tmp_path / "explicit"
    write_photo_folder(explicit / "train", n=6, classes=True)
    write_photo_folder(explicit / "val", n=3, classes=True)
    tr, te = ImageFolder(explicit, 16, split="train"), ImageFolder(explicit, 16, split="test")
    assert (len(tr), len(te), tr.num_classes, te.num_classes) == (6, 3, 3, 3)
    assert all(f.is_relative_to(explicit / "val") for f in te.files) and len(ImageFolder(explicit, 16)) == 9


def test_exif_orientation_and_high_bit_depth_images(tmp_path):
    # a 40x20 JPEG whose EXIF says "rotate 90 degrees clockwise to display": read as 20x40
    img = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.convert("RGB").save(tmp_path / "turned.jpg", exif=exif)
    turned = read_image(tmp_path / "turned.jpg", 3, 10**6)
    assert turned.size == (20, 40)
    # 16-bit PNG: scaled by 65535 (not clipped at 255, which made such files near-white)
    arr16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    got = np.asarray(read_image(tmp_path / "deep.png", 1, 10**6), dtype=float)
    np.testing.assert_allclose(got[0], np.round(np.linspace(0, 255, 32)), atol=1)
    # float TIFF in [0, 1] (made black by the 8-bit conversion before); outside [0, 1]: its own range
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "half.tif")
    assert np.asarray(read_image(tmp_path / "half.tif", 3, 10**6)).mean() == pytest.approx(128, abs=1)
    Image.fromarray(np.linspace(-4, 4, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "wide.tif")
    wide = np.asarray(read_image(tmp_path / "wide.tif", 1, 10**6))
    assert wide.min() == 0 and wide.max() == 255
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="non-finite"):
        read_image(tmp_path / "nan.tif", 1, 10**6)


def test_thin_images_and_memory_errors_are_named_skips(tmp_path, monkeypatch):
    root = tmp_path / "odd"
    root.mkdir()
    Image.fromarray(np.zeros((1, 3000, 3), dtype=np.uint8)).save(root / "a_strip.png")  # 370-byte-like thin file
    Image.fromarray(np.zeros((24, 24, 3), dtype=np.uint8)).save(root / "b_ok.png")
    ds = ImageFolder(root, resolution=64, max_pixels=100_000)
    x, _, skipped = ds[0]  # resizing the strip to 64 px high would make 192000 x 64 pixels
    assert x.shape == (3, 64, 64) and len(skipped) == 1 and "a_strip.png" in skipped[0]
    assert "over the 100000-pixel limit" in skipped[0]
    real = folders.read_image

    def fail_on_b(path, channels, max_pixels):
        if path.name == "b_ok.png":
            raise MemoryError("out of memory")
        return real(path, channels, max_pixels)

    monkeypatch.setattr(folders, "read_image", fail_on_b)
    _, _, skipped = ImageFolder(root, resolution=8, max_pixels=10**7)[1]
    assert len(skipped) == 1 and "MemoryError" in skipped[0]


def test_patch_crops_of_large_photos(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(root / f"{i}.png")
    spec = f"folder:{root}?crop=patch&per_image=4&holdout=0.3"
    test = ImageFolder(spec, 32, split="test")
    assert len(test) == 4 * len(test.files)
    a = torch.stack([test[i][0] for i in range(4)])
    assert torch.equal(a, torch.stack([test[i][0] for i in range(4)]))  # fixed evaluation patches
    assert len({a[i].sum().item() for i in range(4)}) == 4  # four different places
    train = ImageFolder(spec, 32, split="train", augment=True)
    assert train[(0, 1)][0].shape == (3, 32, 32) and not torch.equal(train[(0, 1)][0], train[(0, 2)][0])


@pytest.mark.slow
@pytest.mark.parametrize("classes", [False, True])
def test_every_command_on_a_folder_of_photos(tmp_path, capsys, classes):
    """The new user's path: ~50 mixed-size RGB JPEG/PNG photos, nothing but --data folder:PATH."""
    root = write_photo_folder(tmp_path / "photos", n=50, classes=classes, corrupt=1)
    data = f"folder:{root}"
    n_test = len(ImageFolder(root, 16, split="test"))
    n_train = len(ImageFolder(root, 16, split="train"))
    run = tmp_path / "run"
    tiny = [*TINY, "--set", "train.eval_images=8"]
    assert main(["train", "--preset", "eps-photo", "--data", data, "--out", str(run), "--steps", "2", *tiny]) == 0
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert any("val_fd_indep_3" in r for r in rows)  # validated on held-out photos
    model = run / "model"
    # a grayscale preset on colour photos is refused with the exact --set, then works with it
    gray = ["train", "--preset", "eps-fmnist", "--data", data, "--steps", "1", *tiny]
    capsys.readouterr()
    assert main([*gray, "--out", str(tmp_path / "gray")]) == 2
    assert "--set model.image_channels=3" in capsys.readouterr().err
    assert not (tmp_path / "gray").exists()  # nothing written for a start that cannot run
    assert main([*gray, "--out", str(tmp_path / "rgb"), "--set", "model.image_channels=3"]) == 0
    # evaluation with its defaults (decode steps 1,3, seeds 0,1,2, fd_indep) on the held-out photos
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--data", data, "--out", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["n_images"] == n_test and got["split"] == "test" and "fd_indep" in got["results"]["3"]
    rec = tmp_path / "rec.npz"
    assert main(["reconstruct", "--model", str(model), "--data", data, "--out", str(rec), "--device", "cpu"]) == 0
    assert np.load(rec)["reconstruction"].shape == (n_test, 3, 64, 64)
    lat = tmp_path / "lat"
    assert main(["encode-dataset", "--model", str(model), "--data", data, "--out", str(lat), "--device", "cpu"]) == 0
    meta = json.loads((lat / "meta.json").read_text())
    assert meta["images"] == n_train and meta["num_classes"] == (3 if classes else 0)
    feats = tmp_path / "feats"
    assert main(["features", "train", "--data", data, "--out", str(feats), "--epochs", "0.1"]) == 0
    objective = json.loads((feats / "config.json").read_text())["objective"]
    assert objective == ("classes" if classes else "rotation")  # unlabelled photos: self-supervised


def test_init_from_starts_a_new_run_from_exported_weights(fmnist, tmp_path, capsys):
    def train(out, *extra):
        return main(["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(out), *TINY, *extra])

    assert train(tmp_path / "a", "--steps", "2") == 0
    frozen = ["--set", "train.lr=0", "--set", "train.disc_lr=0"]  # weights stay where they started
    assert train(tmp_path / "b", "--steps", "1", "--init-from", str(tmp_path / "a" / "model"), *frozen) == 0
    assert "initialised from" in capsys.readouterr().out
    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "b" / "model" / "model.safetensors").read_bytes() == a
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["train"]["init_from"] == str((tmp_path / "a" / "model").resolve())
    # another architecture: a readable error, and no run left behind
    capsys.readouterr()
    wide = ["--set", "model.decoder.channels=8", "--init-from", str(tmp_path / "a" / "model")]
    assert train(tmp_path / "c", "--steps", "1", *wide) == 2
    assert "does not match this model's config" in capsys.readouterr().err
    assert train(tmp_path / "d", "--steps", "1", "--init-from", str(tmp_path / "nothing")) == 2
    assert "not an epsvae model directory" in capsys.readouterr().err
