"""Small feature networks trained here, for the offline perceptual loss and the independent evaluation distance.

Objectives (`epsvae features train --objective ...`):
- `classes`: a classifier on the dataset's labels (Fashion-MNIST's 10 classes, class sub-folders).
- `rotation`: which of four rotations an image was given (Gidaris et al. 2018). Label-free:
  any folder of photos trains it, and telling "upright" from "on its side" needs edges,
  textures and object parts, the structure a perceptual distance should compare.
- `contrastive`: SimCLR's NT-Xent over two augmented views of each image (Chen et al.
  2020). Label-free; its pooled features summarise a whole image, as Inception's pool
  features do for FID. The views differ by crop, flip and brightness/contrast only, never
  by blur or noise, so the features stay sensitive to the artefacts a decoder makes.

Roles (networks trained once per dataset, resolution and channel count, and cached under
a fingerprint of the data, see `auto_network`):
- `perceptual` (`features:auto`, the offline perceptual loss and `fd_domain`): `classes`
  when the data has two or more classes, else `rotation`.
- `indep` (`fd_indep`, the evaluation distance the docs report): `contrastive`, with other
  widths and another seed, so its objective and weights differ from every perceptual
  network and no training loss has ever seen its feature space.

For Fashion-MNIST at 32 px the package ships these networks (`SHIPPED_DIR`), so that every
machine measures with the same weights; other data trains its own once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataError, StepBatches, cache_dir, cache_lock, load_batch, open_dataset
from .nn.layers import norm

OBJECTIVES = ("classes", "rotation", "contrastive")
# On the CPU a feature network trains with this many threads whatever the process's own
# setting: the result of a float reduction depends on how it is split over threads, so the
# same seed trained with 1 and with 2 threads gives two different networks, and the same
# images two different fd_indep values (docs/results.md, "One independent network is one
# instance"). A fixed count makes the network independent of the process's threads; a CPU
# with other vector instructions still rounds differently (measured: Intel Xeon and AMD EPYC
# give other networks), hence the shipped networks (SHIPPED_DIR) and every report naming the
# weights it measured with (FeatureNet.digest).
FEATURE_THREADS = 2

ROLES = {  # role -> (objective or 'auto', widths, seed, epochs, batch size)
    "perceptual": ("auto", (16, 32, 64), 0, 2.0, 128),
    "indep": ("contrastive", (16, 32, 64, 128), 1, 1.0, 256),
    "indep2": ("contrastive", (16, 32, 64, 128), 2, 1.0, 256),  # a second instance (evaluate.py's fd_indep2)
}


class PerceptualError(RuntimeError):
    """A perceptual or feature network that cannot be built (missing package, weights or files)."""

    epsvae_user_error = True


class FeatureNet(nn.Module):
    """A small conv net whose stage outputs serve as perceptual (and Fréchet distance) features.

    `head` is 'linear' (classes, rotation) or 'mlp' (the contrastive projection head)."""

    def __init__(
        self,
        image_channels: int = 1,
        widths: tuple[int, ...] = (32, 64, 128),
        num_classes: int = 10,
        head: str = "linear",
        objective: str = "classes",
    ):
        super().__init__()
        self.config = {"image_channels": image_channels, "widths": list(widths), "num_classes": num_classes,
                       "head": head, "objective": objective}  # fmt: skip
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
        if head == "linear":
            self.head = nn.Linear(cin, num_classes)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(), nn.Linear(cin, num_classes))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, C, H, W) in [-1, 1] -> one feature map per stage (before its pooling)."""
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.avg_pool2d(x, 2))
            feats.append(x)
        return feats

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features (N, widths[-1]): the vector a Fréchet distance uses."""
        return self.features(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def digest(self) -> str:
        """A short digest of the weights: which network measured a distance (reports record it)."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode() + b"\0" + v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        # config.json last: its presence marks a complete network (the cache's test)
        tmp = directory / f"config.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**self.config, **(extra or {})}, indent=2))
        tmp.replace(directory / "config.json")

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
        net = cls(cfg["image_channels"], tuple(cfg["widths"]), cfg["num_classes"], cfg.get("head", "linear"),
                  cfg.get("objective", "classes"))  # fmt: skip
        net.load_state_dict(load_file(str(directory / "model.safetensors")))
        return net.eval()


# --------------------------------------------------------------------------- objectives


def rotation_batch(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by k * 90 degrees, k uniform in 0..3: (images, k)."""
    k = torch.randint(0, 4, (x.shape[0],), generator=generator)
    return torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)]), k


def augment_views(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """A random view of each image: crop of 40-100% of the area at a random place (scaled back to full
    size), a horizontal flip, brightness +-0.2 and contrast x[0.8, 1.2]. No blur, no noise."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    scale = u(0.4, 1.0).sqrt()  # side fraction
    tx, ty = (1 - scale) * u(-1, 1), (1 - scale) * u(-1, 1)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = scale, ty
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    c, b = u(0.8, 1.2).reshape(-1, 1, 1, 1), u(-0.2, 0.2).reshape(-1, 1, 1, 1)
    return ((v - mean) * c.to(v) + mean + b.to(v)).clamp(-1, 1)


def nt_xent(z: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss for projections z (2N, D): rows i and i + N are the two views of one image."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def objective_loss(net: FeatureNet, objective: str, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, flip: bool):
    if objective == "classes":
        return F.cross_entropy(net(x), y)
    if objective == "rotation":
        xr, k = rotation_batch(x.cpu(), g)
        return F.cross_entropy(net(xr.to(x.device)), k.to(x.device))
    views = torch.cat([augment_views(x, g, flip), augment_views(x, g, flip)])
    return nt_xent(net(views))


def train_feature_net(
    data_spec: str,
    out: str | Path,
    objective: str = "auto",
    epochs: float = 2.0,
    batch_size: int = 128,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (16, 32, 64),
    resolution: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    min_images: int | None = None,
    device: str | None = None,
) -> dict:
    """Train a FeatureNet on `data_spec`'s train split with `objective`; save it to `out`. Returns its metrics.

    The budget is `epochs` passes over the data, and at least `min_images` images (label-free
    objectives: 50k by default, so a folder of 50 photos still trains for a while).
    `objective='auto'` is `classes` for labelled data, else `rotation`."""
    torch.manual_seed(seed)
    train = open_dataset(data_spec, "train", resolution, channels)
    num_classes = getattr(train, "num_classes", 0)
    if objective == "auto":
        objective = "classes" if num_classes >= 2 else "rotation"
    if objective not in OBJECTIVES:
        raise PerceptualError(f"unknown objective {objective!r}; use auto, {', '.join(OBJECTIVES)}")
    if objective == "classes" and num_classes < 2:
        raise DataError(f"{data_spec} has no class labels: use --objective rotation or contrastive")
    outputs = {"classes": num_classes, "rotation": 4, "contrastive": 64}[objective]
    head = "mlp" if objective == "contrastive" else "linear"
    first = train[(0, 0)][0]
    net = FeatureNet(first.shape[0], widths, outputs, head, objective)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    size = min(len(train), limit) if limit else len(train)
    if min_images is None:
        min_images = 50_000 if objective != "classes" else 0
    steps = max(1, int(epochs * size / batch_size), math.ceil(min_images / batch_size))
    steps = int(os.environ.get("EPSVAE_FEATURE_STEPS", steps))  # smoke tests only: a fixed, tiny budget
    batches = StepBatches(size, batch_size, seed=seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    flip = bool(getattr(train, "flip_ok", True))
    start = time.time()
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(FEATURE_THREADS)  # the same network whatever the caller's threads (FEATURE_THREADS)
    try:
        with torch.enable_grad():  # callers may be under no_grad (evaluation builds it on demand)
            for step in range(steps):
                x, y = load_batch(train, batches.indices(step))
                loss = objective_loss(net, objective, x.to(device), y.to(device), g, flip)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if step % 100 == 0 or step == steps - 1:
                    print(f"[features] {objective} step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    finally:
        torch.set_num_threads(threads)
    net.eval().cpu()
    metrics = {"data": data_spec, "objective": objective, "train_steps": steps, "device": device,
               "threads": FEATURE_THREADS if device == "cpu" else None, "digest": net.digest(),
               "train_seconds": round(time.time() - start, 1)}  # fmt: skip
    if objective == "classes":
        metrics["test_accuracy"] = _test_accuracy(net, data_spec, resolution, channels)
    net.save(out, {"metrics": metrics})
    print(f"[features] saved to {out}: {metrics}")
    return metrics


@torch.no_grad()
def _test_accuracy(net: FeatureNet, data_spec: str, resolution: int | None, channels: int | None) -> float | None:
    try:
        test = open_dataset(data_spec, "test", resolution, channels)
    except DataError:
        return None
    correct = total = 0
    for s in range(0, min(len(test), 10_000), 500):
        x, y = load_batch(test, list(range(s, min(s + 500, len(test)))))
        correct += (net(x).argmax(1) == y).sum().item()
        total += len(y)
    return round(correct / total, 4)


# --------------------------------------------------------------------------- cached networks per dataset


def dataset_fingerprint(data_spec: str, resolution: int | None = None, channels: int | None = None) -> str:
    """A short digest of a dataset's training split: its size and 16 images spread over it.

    The cache of automatic networks is keyed by it, so a network trained on other data under
    the same spec (a test's stand-in files, another folder at the same path) is never reused."""
    ds = open_dataset(data_spec, "train", resolution, channels, augment=False)
    n = len(ds)
    x, y = load_batch(ds, sorted({(i * n) // 16 for i in range(16)}))
    h = hashlib.sha256(f"{n}/{tuple(x.shape)}".encode())
    h.update(x.float().numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()[:10]


def auto_network_dir(role: str, data_spec: str, resolution: int | None = None, channels: int | None = None) -> Path:
    """Where the `role` network for this data (spec, resolution, channels, fingerprint) is cached."""
    if role not in ROLES:
        raise PerceptualError(f"unknown feature-network role {role!r}; use {', '.join(ROLES)}")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in data_spec)[-80:]
    size = f"-{resolution}px" if resolution else ""
    chans = f"-{channels}c" if channels else ""
    return cache_dir() / f"{role}-{safe}{size}{chans}-{dataset_fingerprint(data_spec, resolution, channels)}"


# Networks that ship with the package, one directory per role and dataset fingerprint
# (`{role}-{fingerprint}`): Fashion-MNIST at 32 px, grayscale. Trained once by `auto_network`;
# retrained on another CPU the same seed gives another network (other vector instructions
# round differently; docs/results.md, "Shipped reference networks"), so without them every
# machine would measure fd_indep in its own instance and no two sessions' figures would
# compare. With them, as with Inception's fixed weights for FID, they do.
SHIPPED_DIR = Path(__file__).parent / "networks"
# set to 1 to train (and cache) this machine's own networks instead of the shipped ones
TRAIN_OWN_ENV = "EPSVAE_TRAIN_FEATURE_NETS"


def shipped_network(role: str, fingerprint: str) -> Path | None:
    """The package's network for this role and data fingerprint, if it ships one (and the
    user has not asked for their own); its weights are checked against the digest it records."""
    path = SHIPPED_DIR / f"{role}-{fingerprint}"
    if os.environ.get(TRAIN_OWN_ENV, "") not in ("", "0") or not (path / "config.json").is_file():
        return None
    try:
        recorded = json.loads((path / "config.json").read_text())["metrics"]["digest"]
        actual = FeatureNet.load(path).digest()
    except Exception as e:  # noqa: BLE001 - any unreadable file (safetensors raises its own error type)
        raise PerceptualError(f"the shipped {role} network at {path} cannot be read ({e}); reinstall epsvae, "
                              f"or set {TRAIN_OWN_ENV}=1 to train this machine's own") from None  # fmt: skip
    if actual != recorded:
        raise PerceptualError(f"the shipped {role} network at {path} is damaged: its weights digest {actual}, "
                              f"recorded {recorded}; reinstall epsvae, or set {TRAIN_OWN_ENV}=1 to train "
                              "this machine's own")  # fmt: skip
    return path


def auto_network(role: str, data_spec: str, resolution: int | None = None, channels: int | None = None) -> Path:
    """The directory of the `role` network for this data: the package's own if it ships one for
    this data (`SHIPPED_DIR`, used in place, ahead of anything cached), else the cached network
    trained here once."""
    path = auto_network_dir(role, data_spec, resolution, channels)
    shipped = shipped_network(role, path.name.rsplit("-", 1)[1])
    if shipped is not None:
        return shipped
    if (path / "config.json").is_file():
        return path
    # Several processes may start on the same data at once (two training seeds, a benchmark's
    # parallel arms): one trains the network, the others wait for it; it is trained into a
    # private directory and moved into place whole, so no process ever reads a half-written one.
    with cache_lock(path, f"to finish training {path.name}"):
        if not (path / "config.json").is_file():
            objective, widths, seed, epochs, batch = ROLES[role]
            print(f"[features] training the {role} network ({objective}) for {data_spec} once, cached at {path}")
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process that died training it
                shutil.rmtree(stale, ignore_errors=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
            train_feature_net(data_spec, tmp, objective, epochs, batch, widths=widths, resolution=resolution,
                              channels=channels, seed=seed)  # fmt: skip
            shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover of an older epsvae (no config.json)
            os.replace(tmp, path)
    return path
