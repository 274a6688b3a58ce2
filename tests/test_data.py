import numpy as np
import pytest
import torch
from PIL import Image

from epsvae import data
from epsvae.data import DataError, FashionMNIST, ImageFolder, StepBatches, open_dataset

from helpers import write_image_folder


def test_fashion_mnist_padded_with_labels(fmnist):
    ds = FashionMNIST("train")
    assert len(ds) == 64 and ds.images.shape == (64, 32, 32)
    x, y = ds.batch(torch.tensor([0, 3]))
    assert x.shape == (2, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # the 2-pixel pad is background
    assert y.tolist() == [0, 3]
    assert len(FashionMNIST("test")) == 32
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        FashionMNIST("val")


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EPSVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*EPSVAE_DATA"):
        data.find_fashion_mnist(download=False)


def test_download_is_verified(tmp_path, monkeypatch):
    """A download whose checksum is wrong is rejected and not kept."""
    monkeypatch.setenv("EPSVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data, "_download", lambda url, dst: dst.write_bytes(b"tampered"))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.find_fashion_mnist(download=True)
    assert not any((tmp_path / "cache" / "fashion-mnist").glob("*.gz"))


def test_download_happens_once_when_processes_start_together(tmp_path, monkeypatch, capsys):
    """Two callers at once: one downloads each file, the other waits and finds them verified."""
    import hashlib
    import threading
    import time

    monkeypatch.setenv("EPSVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    files = {f"f{i}.gz": f"content {i}".encode() for i in range(2)}
    monkeypatch.setattr(data, "FMNIST_FILES", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})
    fetched = []

    def slow(url, dst):
        fetched.append(url)
        time.sleep(0.3)  # the other caller arrives during the download
        dst.write_bytes(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data, "_download", slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(data.find_fashion_mnist(download=True))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    target = tmp_path / "cache" / "fashion-mnist"
    assert got == [target, target] and len(fetched) == len(files)
    assert "waiting for another process to finish downloading" in capsys.readouterr().out
    assert {n: (target / n).read_bytes() for n in files} == files


def test_image_folder_skips_and_names_corrupt_files(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=4, corrupt=1)
    ds = ImageFolder(root, resolution=16)
    assert len(ds) == 5 and ds.class_index == {"class0": 0, "class1": 1}
    items = [ds[(i, i)] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 for x, _, _ in items)
    skipped = [name for _, _, names in items for name in names]  # the skip travels with the batch
    assert len(skipped) == 1 and "broken0.jpg\t" in skipped[0]
    strict = ImageFolder(root, resolution=16, strict=True)
    with pytest.raises(DataError, match="cannot read image .*broken0.jpg"):
        [strict[i] for i in range(len(strict))]


def test_decompression_bomb_refused(tmp_path):
    root = tmp_path / "bomb"
    root.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(root / "big.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "small.png")
    ds = ImageFolder(root, resolution=8, max_pixels=1000, strict=True)
    with pytest.raises(DataError, match="big.png"):
        ds[0]
    lenient = ImageFolder(root, resolution=8, max_pixels=1000)
    assert len(lenient[0][2]) == 1 and "big.png" in lenient[0][2][0]


def test_folder_crops_deterministic_per_seed_and_grayscale(tmp_path):
    root = write_image_folder(tmp_path / "imgs", corrupt=0)
    ds = ImageFolder(root, resolution=16, augment=True)
    assert torch.equal(ds[(1, 42)][0], ds[(1, 42)][0])
    assert not all(torch.equal(ds[(1, s)][0], ds[(1, 0)][0]) for s in range(1, 6))
    evals = ImageFolder(root, resolution=16)
    assert torch.equal(evals[(1, 1)][0], evals[(1, 2)][0])  # centre crop, no flip
    with pytest.raises(DataError, match=r"colour images .*--set model.image_channels=3"):
        ImageFolder(root, resolution=16, channels=1)  # never silently gray


def test_step_batches_resume_at_same_index_and_shard_ranks():
    full = StepBatches(10, 4, seed=3)
    steps = [full.indices(s) for s in range(6)]
    assert StepBatches(10, 4, seed=3).indices(4) == steps[4]  # a fresh object at step 4 agrees
    first_epoch = [i for s in steps[:2] for i, _ in s] + [i for i, _ in steps[2][:2]]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    # the batch size is global: two ranks split each step's batch, whatever their number
    r0, r1 = StepBatches(10, 4, 2, 0, seed=3), StepBatches(10, 4, 2, 1, seed=3)
    assert r0.indices(1) + r1.indices(1) == full.indices(1) and len(r0.indices(1)) == 2
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        StepBatches(10, 4, 3, 0)


def test_unknown_spec_and_wrong_channels(fmnist):
    with pytest.raises(DataError, match="unknown dataset spec"):
        open_dataset("imagenet")
    with pytest.raises(DataError, match="1 channel"):
        open_dataset("fashion-mnist", channels=3)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("folder:/no/such/dir", resolution=32)
