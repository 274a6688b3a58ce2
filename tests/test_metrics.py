import math

import numpy as np
import pytest
import torch

from epsvae.metrics import FeatureStats, fid_from_stats, frechet_distance, psnr, ssim, summarize


def test_psnr_identical_and_known_noise():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert (psnr(x, x) > 100).all()
    # a constant offset d in [-1, 1] units: MSE = d^2, PSNR = 10 log10(4 / d^2)
    y = (x * 0.5) + 0.1
    assert torch.allclose(psnr(y, y + 0.2), torch.full((3,), 10 * math.log10(4 / 0.04)), atol=1e-3)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    ours = ssim(x, y)
    for i in range(2):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        ref = metrics.structural_similarity(
            a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        assert abs(ours[i].item() - ref) < 1e-4, (ours[i].item(), ref)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_fid_of_identical_statistics_is_zero_and_positive_otherwise():
    f = torch.randn(500, 8, dtype=torch.float64)
    a, b = FeatureStats(8).update(f), FeatureStats(8).update(f)
    assert fid_from_stats(a, b) == pytest.approx(0.0, abs=1e-8)
    c = FeatureStats(8).update(f + 1.0)  # a mean shift of 1 in 8 dimensions: FD = 8
    assert fid_from_stats(a, c) == pytest.approx(8.0, rel=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    c1, c2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])), torch.diag(torch.tensor([4.0, 1.0, 1.0]))
    expected = 5.0 + sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in ((1, 4), (4, 1), (9, 1)))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


def test_streaming_merge_equals_full_batch():
    f = torch.randn(300, 5, dtype=torch.float64) * 3 + 1
    full = FeatureStats(5).update(f)
    parts = [FeatureStats(5).update(chunk) for chunk in f.split(70)]
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    mu, cov = merged.mean_cov()
    assert merged.n == 300
    assert torch.allclose(mu, f.mean(0)) and torch.allclose(cov, torch.from_numpy(np.cov(f.numpy(), rowvar=False)))
    assert torch.allclose(full.mean_cov()[1], cov)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(5).update(f[:1]).mean_cov()


def test_summarize():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert summarize([4.0])["std"] == 0.0


def test_eval_cli_on_tiny_models_writes_valid_json(fmnist, tmp_path, capsys):
    import json

    from epsvae import BaselineVAE, EpsilonVAE
    from epsvae.cli import main
    from epsvae.config import apply_overrides
    from epsvae.features import FeatureNet, auto_network
    from epsvae.presets import model_config

    tiny = ["encoder.channels=4", "decoder.channels=4", "decoder.head_channels=4"]
    for cls, preset in ((EpsilonVAE, "eps-fmnist"), (BaselineVAE, "vae-fmnist")):
        cls(apply_overrides(model_config(preset), tiny)).save_pretrained(tmp_path / preset)
        out = tmp_path / f"{preset}.json"
        args = ["eval", "--model", str(tmp_path / preset), "--data", "fashion-mnist", "--limit", "12"]
        assert main([*args, "--steps", "1,2", "--seeds", "0,1", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["n_images"] == 12 and report["fid_features"] == "indep"
        keys = ["1", "2"] if preset.startswith("eps") else ["deterministic"]
        assert list(report["results"]) == keys
        row = report["results"][keys[0]]
        assert {"psnr", "ssim", "fd_indep", "decode_images_per_s"} <= set(row)
        assert "rfid_inception" not in row and "fd_domain" not in row
        assert len(row["psnr"]["values"]) == len(report["seeds"])
        printed = capsys.readouterr().out
        assert "no loss trained on it; not FID" in printed
        indep = auto_network("indep", "fashion-mnist", 32, 1)  # the network it measured with, by its weights
        assert report["fd_networks"] == {"fd_indep": f"{indep.name}@{FeatureNet.load(indep).digest()}"}
        assert f"fd_indep network: {indep.name}@" in printed
        assert report["grid"] == ("reversed-log" if preset.startswith("eps") else None)
    out = tmp_path / "uniform.json"
    args = ["eval", "--model", str(tmp_path / "eps-fmnist"), "--data", "fashion-mnist", "--limit", "4"]
    assert main([*args, "--steps", "2", "--seeds", "0", "--grid", "uniform", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["grid"] == "uniform"


def test_inception_offline_error_is_clear(monkeypatch, tmp_path):
    from epsvae.evaluate import feature_extractor
    from epsvae.perceptual import PerceptualError

    monkeypatch.setenv("EPSVAE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(PerceptualError, match="pytorch-fid|does not exist"):
        feature_extractor("inception", "fashion-mnist")
