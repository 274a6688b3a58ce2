"""Train the small domain feature network (`epsvae features train`).

A classifier on a labelled training split; its stage features give the offline
perceptual distance (`features:PATH`) and, in the evaluation code, an offline FID that
must never be reported as Inception FID.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import DataError, StepBatches, load_batch, open_dataset
from .perceptual import FeatureNet


def _fit(net, opt, sched, train, batches: StepBatches, steps: int) -> None:
    for step in range(steps):
        x, y = load_batch(train, [i for i, _ in batches.indices(step)])
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"[features] step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)


def train_feature_net(
    data_spec: str,
    out: str | Path,
    epochs: float = 2.0,
    batch_size: int = 128,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (16, 32, 64),
    resolution: int | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> dict:
    """Train a FeatureNet classifier on `data_spec`'s train split; save it to `out`. Returns its metrics."""
    torch.manual_seed(seed)
    train = open_dataset(data_spec, "train", resolution)
    first = train[(0, 0)]
    num_classes = getattr(train, "num_classes", 0)
    if num_classes < 2:
        raise DataError(f"{data_spec} has no class labels; the feature network is trained as a classifier")
    net = FeatureNet(first[0].shape[0], widths, num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    size = min(len(train), limit) if limit else len(train)
    steps = max(1, int(epochs * size / batch_size))
    batches = StepBatches(size, batch_size, seed=seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.time()
    with torch.enable_grad():  # callers may be under no_grad (evaluation builds it on demand)
        _fit(net, opt, sched, train, batches, steps)
    net.eval()
    metrics = {"data": data_spec, "train_steps": steps, "train_seconds": round(time.time() - start, 1)}
    try:
        test = open_dataset(data_spec, "test", resolution)
        correct = total = 0
        with torch.no_grad():
            for s in range(0, min(len(test), 10_000), 500):
                x, y = load_batch(test, list(range(s, min(s + 500, len(test)))))
                correct += (net(x).argmax(1) == y).sum().item()
                total += len(y)
        metrics["test_accuracy"] = round(correct / total, 4)
    except DataError:
        pass
    net.save(out, {"metrics": metrics})
    print(f"[features] saved to {out}: {metrics}")
    return metrics
