"""Can the trajectory discriminator tell a trained ε-VAE's x0_hat from x0? A probe.

    python benchmarks/disc_probe.py --model DIR [--data fashion-mnist] [--steps 300] [--lrs 2e-4,1e-3]
                                    [--disc-set head=stylegan --disc-set group_channels=8 ...]
                                    [--batch-size 64] [--heldout 512] [--out results/disc-probe] [--quick]

Trains a fresh discriminator (the model's own discriminator config, the training recipe's
loss with lazy R1) on pairs from the training split: real (x0, x_t) against fake
(x0_hat, x_t), both at the same t, x0_hat the model's one-step estimate, exactly as in
training but with the autoencoder frozen. Then, on held-out test pairs, it reports how
often the discriminator ranks each real pair above its own fake (0.5 is chance) and the
mean logit gap. A control trains the same discriminator, for the same steps, against
x0 blurred by a 2x2 average pool: if the control separates and x0_hat does not, the
adversarial term of training gives the decoder little to follow at this point (the
question behind the ablation's "+ trajectory GAN" row).

`--disc-set KEY=VALUE` (repeatable) changes the probed discriminator's config
(`model.discriminator.KEY`), so that designs (head, GroupNorm grouping) can be compared on
one frozen decoder: which of them separates its x0_hat from x0, and by how much.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from _common import DEVICE, new_result, save  # also puts src/ on the path

from epsvae import load_pretrained
from epsvae.config import AutoencoderConfig, ConfigError, LossConfig, apply_overrides, to_dict
from epsvae.data import load_batch, open_dataset
from epsvae.losses import disc_pair, discriminator_loss
from epsvae.models import EpsilonVAE, build_discriminator


def blur(x: torch.Tensor) -> torch.Tensor:
    """The control's fake: x0 through a 2x2 average pool and back up (nearest)."""
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")


def pairs(model: EpsilonVAE, x: torch.Tensor, fake: str, seed: int):
    """(x_t, t, fake x0) for a batch: x_t and t from the model's training forward."""
    with torch.no_grad():
        out = model(x, generator=torch.Generator(x.device).manual_seed(seed))
    return out.x_t, out.t, out.x0_hat if fake == "x0_hat" else blur(x)


def probe(
    model,
    train,
    test,
    fake: str,
    lr: float,
    steps: int,
    batch: int,
    seed: int = 0,
    disc_config: AutoencoderConfig | None = None,
) -> dict:
    """Train a fresh discriminator (`disc_config`'s; default the model's own) against `fake`; score it held out."""
    torch.manual_seed(seed)
    disc = build_discriminator(disc_config or model.config).to(DEVICE)
    opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.0, 0.999))  # the recipe's betas
    lc, rng = LossConfig(), torch.Generator().manual_seed(seed)
    gaps, t0 = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(train), (batch,), generator=rng).tolist()
        x = load_batch(train, idx)[0].to(DEVICE)
        x_t, t, x_fake = pairs(model, x, fake, seed + step)
        out = SimpleNamespace(x0_hat=x_fake, x_t=x_t, t=t)
        loss, terms = discriminator_loss(disc, x, out, lc, r1_step=step % lc.r1_every == 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        gaps.append(float(terms["d_real"].detach() - terms["d_fake"].detach()))
    seconds = time.perf_counter() - t0
    wins, gap_sum, l1, n = 0, 0.0, 0.0, 0
    disc.eval()
    with torch.no_grad():
        for start in range(0, len(test), batch):
            x = load_batch(test, list(range(start, min(start + batch, len(test)))))[0].to(DEVICE)
            x_t, t, x_fake = pairs(model, x, fake, 10**6 + start)
            real, fake_logits = disc(disc_pair(x, x_t), t), disc(disc_pair(x_fake, x_t), t)
            real, fake_logits = real.reshape(len(x), -1).mean(1), fake_logits.reshape(len(x), -1).mean(1)  # patches
            wins += int((real > fake_logits).sum())
            gap_sum += float((real - fake_logits).sum())
            l1 += float((x_fake - x).abs().mean(dim=(1, 2, 3)).sum())
            n += x.shape[0]
    tail = gaps[-min(50, len(gaps)) :]
    return {
        "fake": fake,
        "lr": lr,
        "steps": steps,
        "train_gap_last50": sum(tail) / len(tail),
        "heldout_rank_accuracy": wins / n,
        "heldout_gap": gap_sum / n,
        "fake_l1": l1 / n,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an exported ε-VAE directory (e.g. RUN/model)")
    ap.add_argument("--data", default=None, help="dataset spec (default: the run's training data, or fashion-mnist)")
    ap.add_argument("--steps", type=int, default=300, help="discriminator steps per probe")
    ap.add_argument("--lrs", default="2e-4,1e-3", help="discriminator learning rates to try")
    ap.add_argument(
        "--disc-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the probed discriminator's config, e.g. head=stylegan (repeatable)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=512, help="test pairs to score")
    ap.add_argument("--out", default="results/disc-probe")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 steps, 8 held-out pairs")
    args = ap.parse_args()
    model = load_pretrained(args.model)
    if not isinstance(model, EpsilonVAE):
        raise SystemExit(f"{args.model}: a {type(model).__name__}; the trajectory probe needs an ε-VAE")
    model = model.to(DEVICE).eval()
    data = args.data or _run_data(Path(args.model)) or "fashion-mnist"
    cfg = model.config
    try:
        disc_cfg = apply_overrides(cfg, [f"discriminator.{kv}" for kv in args.disc_set])
    except ConfigError as e:
        raise SystemExit(f"--disc-set: {e}") from None
    train = open_dataset(data, "train", cfg.image_size, cfg.image_channels)
    test = open_dataset(data, "test", cfg.image_size, cfg.image_channels)
    steps, heldout, batch = (3, 8, 4) if args.quick else (args.steps, args.heldout, args.batch_size)
    test = torch.utils.data.Subset(test, range(min(heldout, len(test))))
    result = {
        **new_result(),
        "model": args.model,
        "data": data,
        "batch_size": batch,
        "discriminator": to_dict(disc_cfg.discriminator),
        "disc_set": args.disc_set,
    }
    print(f"{'fake':<8}{'lr':>8}{'steps':>7}{'fake L1':>9}{'train gap':>11}{'held-out gap':>14}{'rank acc':>10}")
    for fake in ("x0_hat", "blur2x2"):
        for lr in (float(v) for v in args.lrs.split(",")):
            row = probe(model, train, test, fake, lr, steps, batch, disc_config=disc_cfg)
            result["rows"].append(row)
            print(
                f"{fake:<8}{lr:>8.0e}{steps:>7}{row['fake_l1']:>9.4f}{row['train_gap_last50']:>11.3f}"
                f"{row['heldout_gap']:>14.3f}{row['heldout_rank_accuracy']:>10.3f}",
                flush=True,
            )
    save(result, Path(args.out) / "disc_probe.json")
    print("rank acc: share of held-out pairs whose real pair scores above its fake (0.5: chance)")


def _run_data(model_dir: Path) -> str | None:
    """The training data named in the run's config.json beside an exported RUN/model, if any."""
    cfg = model_dir.parent / "config.json"
    try:
        return json.loads(cfg.read_text())["train"]["data"]
    except (OSError, KeyError, ValueError):
        return None


if __name__ == "__main__":
    main()
