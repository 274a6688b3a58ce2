"""Perceptual distances: LPIPS-VGG (the paper's) and an offline stand-in built on a small trained network.

Specs: 'lpips-vgg' (standard VGG16 weights from the torch hub cache or a download),
'lpips-vgg:PATH' (VGG16 weights file), 'features:PATH' (a network trained by
`epsvae features train`), 'features:auto' (that network for the training set, trained
once and cached), 'none'. All return per-image distances (N,) for images in [-1, 1]
and are frozen: gradients reach the images, never the network.

The `features` distance uses LPIPS's formula without learned layer weights: per
layer, unit-normalise features over channels, square the difference, average over
space, and sum the layers (Zhang et al. 2018, eq. 1 with w = 1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .nn.layers import norm

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 file name in the torch hub cache


class PerceptualError(RuntimeError):
    """A perceptual backbone that cannot be built (missing package or weights)."""

    epsvae_user_error = True


class FeatureNet(nn.Module):
    """A small conv classifier whose stage outputs serve as perceptual (and FID) features."""

    def __init__(self, image_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10):
        super().__init__()
        self.config = {"image_channels": image_channels, "widths": list(widths), "num_classes": num_classes}
        stages, cin = [], image_channels
        for w in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, w, 3, padding=1),
                    norm(w),
                    nn.ReLU(),
                    nn.Conv2d(w, w, 3, padding=1),
                    norm(w),
                    nn.ReLU(),
                )
            )
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, C, H, W) in [-1, 1] -> one feature map per stage (before its pooling)."""
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.avg_pool2d(x, 2))
            feats.append(x)
        return feats

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features (N, widths[-1]): the vector an offline FID uses."""
        return self.features(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({**self.config, **(extra or {})}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory: str | Path) -> FeatureNet:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise PerceptualError(
                f"{directory} holds no feature network; train one with "
                f"`epsvae features train --data fashion-mnist --out {directory}`"
            )
        cfg = json.loads((directory / "config.json").read_text())
        net = cls(cfg["image_channels"], tuple(cfg["widths"]), cfg["num_classes"])
        net.load_state_dict(load_file(str(directory / "model.safetensors")))
        return net.eval()


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


def dataset_fingerprint(data_spec: str, samples: int = 16) -> str:
    """A short digest of a dataset's training split: its size and 16 images spread over it.

    `features:auto` keys its cache by it, so a network trained on other data under the
    same spec (a test's stand-in files, another folder at the same path) is never reused."""
    import hashlib

    from .data import load_batch, open_dataset

    ds = open_dataset(data_spec, "train", 32 if data_spec.startswith("folder:") else None, augment=False)
    n = len(ds)
    x, y = load_batch(ds, sorted({(i * n) // samples for i in range(samples)}))
    h = hashlib.sha256(f"{n}/{tuple(x.shape)}".encode())
    h.update(x.float().numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()[:10]


def features_auto_dir(data_spec: str) -> Path:
    """The cache directory of `features:auto` for this dataset (its spec and its fingerprint)."""
    from .data import cache_dir

    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in data_spec)
    return cache_dir() / f"features-{safe}-{dataset_fingerprint(data_spec)}"


def build_perceptual(spec: str, data_spec: str | None = None) -> nn.Module | None:
    """A frozen distance module from a spec (see the module docstring); None for 'none'."""
    if spec == "none":
        return None
    if spec == "lpips-vgg" or spec.startswith("lpips-vgg:"):
        return LPIPSVGG(spec.split(":", 1)[1] if ":" in spec else None)
    if spec == "features:auto":
        if data_spec is None:
            raise PerceptualError("features:auto needs the training dataset to train on")
        path = features_auto_dir(data_spec)
        if not (path / "config.json").is_file():
            from .features import train_feature_net

            print(f"[perceptual] training the feature network for {data_spec} once, cached at {path}")
            train_feature_net(data_spec, path)
        return FeatureDistance(FeatureNet.load(path))
    if spec.startswith("features:"):
        return FeatureDistance(FeatureNet.load(spec.split(":", 1)[1]))
    raise PerceptualError(
        f"unknown perceptual backbone {spec!r}; use lpips-vgg[:PATH], features:PATH, features:auto or none"
    )
