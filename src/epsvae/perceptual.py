"""Perceptual distances: LPIPS-VGG (the paper's) and an offline stand-in built on a small trained network.

Specs: 'lpips-vgg' (standard VGG16 weights from the torch hub cache or a download),
'lpips-vgg:PATH' (VGG16 weights file), 'features:PATH' (a network trained by
`epsvae features train`), 'features:auto' (the `perceptual` network of
`epsvae.features` for the training set: a classifier, or a rotation predictor for
unlabelled data, trained once and cached), 'none'. All return per-image distances (N,) for images in [-1, 1]
and are frozen: gradients reach the images, never the network.

The `features` distance uses LPIPS's formula without learned layer weights: per
layer, unit-normalise features over channels, square the difference, average over
space, and sum the layers (Zhang et al. 2018, eq. 1 with w = 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .features import FeatureNet, PerceptualError, auto_network

__all__ = ["FeatureDistance", "FeatureNet", "LPIPSVGG", "PerceptualError", "build_perceptual"]

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 file name in the torch hub cache


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


class FeatureDistance(nn.Module):
    """LPIPS's formula over a FeatureNet's stages, uniform layer weights."""

    def __init__(self, net: FeatureNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureDistance:  # always frozen, always eval
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net.features(x), self.net.features(y)
        return sum((_unit(a) - _unit(b)).pow(2).sum(dim=1).mean(dim=(1, 2)) for a, b in zip(fx, fy, strict=True))


class LPIPSVGG(nn.Module):
    """The `lpips` package's VGG LPIPS; grayscale inputs are repeated to 3 channels."""

    def __init__(self, weights: str | None = None):
        super().__init__()
        try:
            import lpips
            import torchvision
        except ImportError:
            raise PerceptualError(
                "lpips-vgg needs the lpips and torchvision packages: pip install 'epsvae[lpips]' "
                "(or use an offline backbone: features:PATH, trained by `epsvae features train`)"
            ) from None
        path = weights or os.environ.get("EPSVAE_VGG16_WEIGHTS")
        if path is None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
            path = str(cached) if cached.is_file() else None
        if path is None:  # a user's machine with internet: torchvision downloads into the hub cache
            try:
                state = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
            except Exception as exc:  # URLError, SSL, timeouts: all mean "no weights here"
                raise PerceptualError(
                    f"could not load the VGG16 weights for LPIPS ({type(exc).__name__}: {exc}). Offline, put "
                    f"{VGG16_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'}, pass lpips-vgg:PATH, or set "
                    "EPSVAE_VGG16_WEIGHTS; or use an offline backbone: features:PATH"
                ) from None
        else:
            if not Path(path).is_file():
                raise PerceptualError(f"VGG16 weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        # lpips splits vgg.features into slices that keep the original layer indices as names
        own = self.lpips.net.state_dict()
        mapped = {}
        for key in own:
            _, index, param = key.split(".")
            mapped[key] = state[f"features.{index}.{param}"]
        self.lpips.net.load_state_dict(mapped)
        self.lpips.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSVGG:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        return self.lpips(x, y).flatten()


def build_perceptual(
    spec: str, data_spec: str | None = None, resolution: int | None = None, channels: int | None = None
) -> nn.Module | None:
    """A frozen distance module from a spec (see the module docstring); None for 'none'.

    `features:auto` needs the training data (`data_spec`, and for image folders the
    model's `resolution` and `channels`): its network is trained once for them and cached."""
    if spec == "none":
        return None
    if spec == "lpips-vgg" or spec.startswith("lpips-vgg:"):
        return LPIPSVGG(spec.split(":", 1)[1] if ":" in spec else None)
    if spec == "features:auto":
        if data_spec is None:
            raise PerceptualError("features:auto needs the training dataset to train on")
        return FeatureDistance(FeatureNet.load(auto_network("perceptual", data_spec, resolution, channels)))
    if spec.startswith("features:"):
        return FeatureDistance(FeatureNet.load(spec.split(":", 1)[1]))
    raise PerceptualError(
        f"unknown perceptual backbone {spec!r}; use lpips-vgg[:PATH], features:PATH, features:auto or none"
    )
