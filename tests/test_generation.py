"""Latent generation: latent sets and their statistics, the DiT, its training, sampling, eval-gen."""

import json

import numpy as np
import pytest
import torch

from epsvae import EpsilonVAE, load_pretrained
from epsvae.cli import main
from epsvae.config import DiTConfig
from epsvae.generation import LatentGenerator, resolve_labels
from epsvae.latents import LatentDataset, encode_dataset
from epsvae.nn.dit import DiT, sincos_2d
from epsvae.presets import generator_run_config

from conftest import tiny_config
from helpers import write_image_folder

TINY_DIT = [
    "--preset", "dit-fmnist",
    "--set", "model.hidden=16", "--set", "model.depth=1", "--set", "model.heads=2",
    "--set", "train.log_every=1", "--set", "train.sample_every=1", "--set", "train.sample_steps=2",
    "--set", "train.warmup=1",
    "--batch-size", "4", "--no-progress",
]  # fmt: skip


def _dit(**kw) -> LatentGenerator:
    cfg = DiTConfig(hidden=16, depth=2, heads=2, patch_size=2, latent_channels=2, latent_size=8, num_classes=3, **kw)
    gen = LatentGenerator(cfg)
    for p in gen.parameters():  # leave the zero init, so the outputs depend on every input
        torch.nn.init.normal_(p, std=0.2)
    return gen


def _save_ae(path, seed=0):
    """An untrained tiny ε-VAE for 32x32 grey images (16x16x2 latents), exported."""
    torch.manual_seed(seed)
    EpsilonVAE(tiny_config(size=32)).save_pretrained(path)
    return path


@pytest.fixture
def ae_and_latents(fmnist, tmp_path):
    """A tiny ε-VAE exported, and the (fake) Fashion-MNIST training split encoded with it."""
    ae = _save_ae(tmp_path / "ae")
    assert main(["encode-dataset", "--model", str(ae), "--data", "fashion-mnist", "--out", str(tmp_path / "lat")]) == 0
    return ae, tmp_path / "lat"


# --------------------------------------------------------------------------- the network


def test_dit_sizes_match_the_paper():
    # DiT table 1 (ImageNet 256, 32x32x4 latents, patch 2): S 33M, B 130M, L 458M, XL 675M
    expected = {"dit-S": 33.0, "dit-B": 130.5, "dit-L": 458.1, "dit-XL": 675.1}
    for name, millions in expected.items():
        cfg = generator_run_config(name).model
        cfg.latent_channels, cfg.latent_size, cfg.num_classes = 4, 32, 1000
        with torch.device("meta"):
            n = sum(p.numel() for p in DiT(cfg).parameters())
        assert abs(n / 1e6 - millions) / millions < 0.01, (name, n)


def test_dit_starts_at_zero_and_keeps_shapes():
    cfg = DiTConfig(hidden=32, depth=2, heads=4, patch_size=2, latent_channels=3, latent_size=8, num_classes=5)
    net = DiT(cfg)
    x = torch.randn(2, 3, 8, 8)
    v = net(x, torch.rand(2), torch.tensor([0, 5]))  # 5 = the null label
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(v))  # adaLN-zero output layer
    assert net(torch.randn(1, 3, 8, 12), torch.rand(1), torch.tensor([1])).shape == (1, 3, 8, 12)  # other sizes
    with pytest.raises(ValueError, match="divisible by the patch size 2"):
        net(torch.randn(1, 3, 7, 8), torch.rand(1), torch.tensor([1]))


def test_patches_map_back_to_their_place():
    gen = _dit()
    x = torch.randn(1, 2, 8, 8)
    t, y = torch.rand(1), torch.tensor([1])
    base = gen.velocity(x, t, y)
    for rows, cols in ((slice(0, 2), slice(6, 8)), (slice(4, 6), slice(2, 4))):  # off the diagonal
        x2 = x.clone()
        x2[..., rows, cols] += 1.0  # change one patch
        diff = (gen.velocity(x2, t, y) - base).abs().mean(1)[0]  # (8, 8)
        per_patch = diff.reshape(4, 2, 4, 2).mean((1, 3))
        # attention spreads the change everywhere, but the changed patch itself moves the most
        assert per_patch.argmax().item() == (rows.start // 2) * 4 + cols.start // 2


def test_sampling_runs_from_noise_at_t1_to_data_at_t0():
    gen = _dit()
    c = torch.randn(1, 2, 8, 8)
    # the exact velocity field of a point mass at c under x_t = (1 - t) c + t noise
    gen.velocity = lambda x, t, y: (x - c) / t.reshape(-1, 1, 1, 1)
    out = gen.sample(torch.tensor([0, 1]), torch.randn(2, 2, 8, 8), steps=4)
    torch.testing.assert_close(out, c.expand(2, -1, -1, -1), atol=1e-5, rtol=1e-5)


def test_training_target_follows_the_flow_convention():
    gen = _dit()
    x0 = torch.randn(16, 2, 8, 8) * 3

    class Exact(torch.nn.Module):  # knows x0: the true velocity of x_t = (1 - t) x0 + t noise
        def forward(self, x_t, t, y):
            return (x_t - x0) / t.reshape(-1, 1, 1, 1)

    gen.net = Exact()
    per, _ = gen(x0, torch.zeros(16, dtype=torch.long), torch.Generator().manual_seed(0))
    assert per.max() < 1e-6  # the loss's target is noise - x0, the velocity sampling integrates


def test_sincos_positions_are_distinct():
    pos = sincos_2d(16, 4, 4)
    assert pos.shape == (16, 16)
    assert torch.cdist(pos, pos).add(torch.eye(16)).min() > 0.1


def test_cfg_scale_one_is_the_conditional_prediction():
    gen = _dit()
    x, t, y = torch.randn(4, 2, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 0])
    cond = gen.velocity(x, t, y)
    assert torch.equal(gen.guided_velocity(x, t, y, 1.0), cond)
    uncond = gen.velocity(x, t, torch.full_like(y, gen.null_label))
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(gen.guided_velocity(x, t, y, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_training_loss_drops_labels_and_reaches_every_parameter():
    gen = _dit(class_dropout=0.5)
    x0, y = torch.randn(64, 2, 8, 8), torch.randint(0, 3, (64,))
    per, t = gen(x0, y, torch.Generator().manual_seed(0))
    assert per.shape == (64,) and t.shape == (64,) and ((t > 0) & (t < 1)).all()
    per.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    seen = []
    gen.net.y_embed.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    gen(x0, y, torch.Generator().manual_seed(0))
    dropped = (seen[0] == gen.null_label).float().mean().item()
    assert 0.3 < dropped < 0.7


def test_labels_spec():
    assert resolve_labels("all", 7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert resolve_labels("2", 2, 3).tolist() == [2, 2]
    assert resolve_labels("all", 2, 0).tolist() == [-1, -1]  # unconditional: the null label
    with pytest.raises(ValueError, match="out of range"):
        resolve_labels(3, 1, 3)


# --------------------------------------------------------------------------- latent sets


def test_latent_statistics_round_trip_through_the_exported_config(ae_and_latents):
    ae_dir, lat = ae_and_latents
    ds = LatentDataset(lat)
    meta = ds.meta
    assert meta["flip"] is False and meta["count"] == meta["images"]  # Fashion-MNIST is not flipped
    z = np.load(lat / "latents.npy")
    assert z.shape == (meta["count"], 2, 16, 16) and ds.labels.shape == (meta["count"],)
    np.testing.assert_allclose(meta["latent_mean"], z.mean((0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(meta["latent_std"], z.std((0, 2, 3)), rtol=1e-4)
    ae = load_pretrained(ae_dir)  # the statistics travel with the autoencoder
    assert list(ae.config.latent_mean) == meta["latent_mean"] and list(ae.config.latent_std) == meta["latent_std"]
    zt = torch.from_numpy(z[:16])
    n = ae.normalize_latents(zt)
    assert abs(n.mean().item()) < 1.0
    torch.testing.assert_close(ae.denormalize_latents(n), zt)
    # the latents are the model's own encodings of the split, in order
    from epsvae.data import open_dataset

    x, y = open_dataset("fashion-mnist", "train").batch(torch.arange(4))
    torch.testing.assert_close(ae.encode(x), zt[:4], atol=1e-5, rtol=1e-5)
    assert torch.equal(ds.labels[:4], y)


def test_flipped_copies_and_missing_statistics(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=6, size=20, corrupt=0)
    model = EpsilonVAE(tiny_config(channels=3))
    model.save_pretrained(tmp_path / "ae")
    with pytest.raises(ValueError, match="encode-dataset"):
        model.latent_stats()
    meta = encode_dataset(tmp_path / "ae", f"folder:{root}", tmp_path / "lat", progress=False)
    n = meta["images"]  # the training files: one of the six is held out
    assert meta["flip"] is True and n == 5 and meta["count"] == 2 * n
    z = np.load(tmp_path / "lat" / "latents.npy")
    from epsvae.data import open_dataset

    x = open_dataset(f"folder:{root}", "train", 16, 3, augment=False)[0][0][None]
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x.flip(-1)), torch.from_numpy(z[n : n + 1]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- train, sample, evaluate


def test_train_dit_sample_and_eval_gen(ae_and_latents, tmp_path, capsys):
    ae, lat = ae_and_latents
    run = tmp_path / "dit"
    base = ["train-dit", "--ae", str(ae), "--latents", str(lat), "--out", str(run)]
    assert main([*base, "--steps", "2", *TINY_DIT]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["latent_channels"] == 2 and cfg["model"]["latent_size"] == 16
    assert cfg["model"]["num_classes"] == 10
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2] and np.isfinite(stats[-1]["loss"])
    assert len(stats[-1]["loss_by_t"]) == 5 and (run / "samples" / "step0000002.png").is_file()
    exported = json.loads((run / "model" / "config.json").read_text())
    assert exported["_autoencoder"]["latent_mean"] == json.loads((lat / "meta.json").read_text())["latent_mean"]

    out = tmp_path / "s.npz"
    args = ["sample", "--dit", str(run), "--n", "12", "--steps", "2", "--decode-steps", "1", "--batch-size", "5"]
    assert main([*args, "--cfg", "2.0", "--out", str(out), "--no-progress"]) == 0
    assert "images/s end to end" in capsys.readouterr().out
    got = np.load(out)
    assert got["samples"].dtype == np.uint8 and got["samples"].shape == (12, 1, 32, 32)
    assert got["labels"].tolist() == [i % 10 for i in range(12)] and out.with_suffix(".png").is_file()
    # per-image noise: the batch size does not change the samples
    again = [*args[:-2], "--batch-size", "12", "--cfg", "2.0", "--out", str(tmp_path / "t.npz"), "--no-progress"]
    assert main(again) == 0
    assert np.array_equal(np.load(tmp_path / "t.npz")["samples"], got["samples"])

    report = tmp_path / "g.json"
    assert main(["eval-gen", "--samples", str(out), "--data", "fashion-mnist", "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["fd_indep"] > 0 and result["n_samples"] == 12
    assert "not FID" in capsys.readouterr().out
    # the split's own images are at distance ~0 from it; an untrained generator's samples are not
    from epsvae.data import open_dataset
    from epsvae.images import to_uint8

    real = to_uint8(open_dataset("fashion-mnist", "test").batch(torch.arange(32))[0])
    np.savez(tmp_path / "real.npz", samples=real, labels=np.zeros(32))
    assert main(["eval-gen", "--samples", str(tmp_path / "real.npz"), "--data", "fashion-mnist", "--out",
                 str(tmp_path / "r.json"), "--limit", "32"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["fd_indep"] < 1e-6 < result["fd_indep"]


def test_dit_resume_is_exact(ae_and_latents, tmp_path):
    ae, lat = ae_and_latents
    base = ["train-dit", "--ae", str(ae), "--latents", str(lat), *TINY_DIT]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "2"]) == 0
    assert main(["train-dit", "--out", str(tmp_path / "a"), "--steps", "4", "--no-progress"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "4"]) == 0
    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model" / "model.safetensors").read_bytes()


def test_generation_errors_are_clear(ae_and_latents, tmp_path, capsys):
    ae, lat = ae_and_latents
    # a latent set from another autoencoder
    other = str(_save_ae(tmp_path / "ae2", seed=1))
    assert main(["train-dit", "--ae", other, "--latents", str(lat), "--out", str(tmp_path / "x"), *TINY_DIT]) == 2
    assert "encoded with another autoencoder" in capsys.readouterr().err
    assert main(["train-dit", "--latents", str(tmp_path), "--ae", str(ae), "--out", str(tmp_path / "y")]) == 2
    assert "not a complete latent dataset" in capsys.readouterr().err
    # sampling with the wrong autoencoder
    run = tmp_path / "dit"
    base = ["train-dit", "--ae", str(ae), "--latents", str(lat), "--out", str(run)]
    assert main([*base, "--steps", "1", *TINY_DIT]) == 0
    capsys.readouterr()
    assert main(["sample", "--dit", str(run), "--ae", other, "--n", "2", "--out", str(tmp_path / "s.npz")]) == 2
    assert "not the autoencoder this generator was trained on" in capsys.readouterr().err
    assert main(["eval-gen", "--samples", str(tmp_path / "nope.npz"), "--data", "fashion-mnist"]) == 2
    assert "no samples file" in capsys.readouterr().err


def test_info_for_dit_presets(capsys):
    assert main(["info", "dit-fmnist", "--latent", "2,8,8", "--classes", "10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_867_016 and info["tokens"] == 16 and info["patch_size"] == 2
    assert main(["info", "dit-S"]) == 0 and "32,858,896" in capsys.readouterr().out


def test_unconditional_generator_on_an_unlabelled_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "flat"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # no class sub-folders: labels are -1, the model is unconditional
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")
    ae = tmp_path / "ae"
    EpsilonVAE(tiny_config(channels=3)).save_pretrained(ae)
    lat = tmp_path / "lat"
    assert main(["encode-dataset", "--model", str(ae), "--data", f"folder:{root}", "--out", str(lat)]) == 0
    meta = json.loads((lat / "meta.json").read_text())
    assert meta["num_classes"] == 0 and meta["count"] == 2 * meta["images"] == 10 and meta["flip"] is True
    run = tmp_path / "dit"
    assert (
        main(["train-dit", "--ae", str(ae), "--latents", str(lat), "--out", str(run), "--steps", "2", *TINY_DIT]) == 0
    )
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 0
    out = tmp_path / "s.npz"
    assert main(["sample", "--dit", str(run), "--n", "3", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    got = np.load(out)
    assert got["samples"].shape == (3, 3, 16, 16) and got["labels"].tolist() == [-1, -1, -1]


def test_statistics_are_not_silently_replaced(ae_and_latents, tmp_path, capsys):
    ae, lat = ae_and_latents
    recorded = json.loads((ae / "config.json").read_text())["latent_mean"]
    # a partial encoding does not touch the recorded statistics
    assert main(["encode-dataset", "--model", str(ae), "--data", "fashion-mnist", "--limit", "8",
                 "--out", str(tmp_path / "part")]) == 0  # fmt: skip
    assert json.loads((ae / "config.json").read_text())["latent_mean"] == recorded
    cfg = json.loads((ae / "config.json").read_text())
    cfg["latent_mean"] = [0.0, 0.0]
    (ae / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    again = ["encode-dataset", "--model", str(ae), "--data", "fashion-mnist", "--out", str(tmp_path / "again")]
    assert main(again) == 2 and "--force" in capsys.readouterr().err
    assert main([*again, "--force"]) == 0
    assert json.loads((ae / "config.json").read_text())["latent_mean"] == recorded


def test_a_failed_start_does_not_bind_the_run_directory(ae_and_latents, tmp_path, capsys):
    ae, lat = ae_and_latents
    other = str(_save_ae(tmp_path / "other", seed=3))
    run = str(tmp_path / "dit")
    assert main(["train-dit", "--ae", other, "--latents", str(lat), "--out", run, "--steps", "1", *TINY_DIT]) == 2
    assert main(["train-dit", "--ae", str(ae), "--latents", str(lat), "--out", run, "--steps", "1", *TINY_DIT]) == 0
