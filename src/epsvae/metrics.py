"""Reconstruction and distribution metrics as pure functions over tensors.

Images are float tensors in [-1, 1], (N, C, H, W). PSNR and SSIM are per image; FID is
a pure function of two feature statistics, and `FeatureStats` accumulates those
statistics in a stream (float64 sums), merges across batches or DDP ranks, and never
holds the features themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2), shape (N,)."""
    mse = (x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with an 11x11 Gaussian window (σ = 1.5), shape (N,).

    Computed on [0, 1] images with K1 = 0.01, K2 = 0.03 over the 'valid' region and
    averaged over channels, as scikit-image's `structural_similarity(...,
    gaussian_weights=True, use_sample_covariance=False, data_range=1)`.
    """
    x = (x.double().clamp(-1, 1) + 1) / 2
    y = (y.double().clamp(-1, 1) + 1) / 2
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731  'valid' convolution
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


class FeatureStats:
    """Streaming mean and covariance of feature vectors (float64 sums; mergeable)."""

    @classmethod
    def of_images(cls, extract, images: torch.Tensor, batch: int = 250) -> FeatureStats:
        """The statistics of `extract` (images -> (N, D) features) over an image tensor, `batch` at a time."""
        f = torch.cat([extract(b) for b in images.split(batch)])
        return cls(f.shape[1], f.device).update(f)

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, feats: torch.Tensor) -> FeatureStats:
        """Add a batch of features (N, D)."""
        f = feats.detach().to(self.sum.device, torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        self.n += other.n
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum the statistics over all DDP ranks (no-op without torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device)
            for t in (n, self.sum, self.outer):
                torch.distributed.all_reduce(t)
            self.n = int(n.item())
        return self

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), in float64.

    tr((cov1 cov2)^(1/2)) is the sum of square roots of the eigenvalues of
    cov1^(1/2) cov2 cov1^(1/2), a symmetric PSD matrix with the same eigenvalues.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    vals, vecs = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    inner = root1 @ cov2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt
    return max(float(fd), 0.0)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


def summarize(values: list[float]) -> dict[str, float]:
    """Mean and (sample) standard deviation of per-seed values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}
