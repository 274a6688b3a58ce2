import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from epsvae import EpsilonVAE, load_pretrained, losses
from epsvae.cli import main
from epsvae.config import RunConfig, TrainConfig, from_dict
from epsvae.losses import autoencoder_loss, discriminator_loss
from epsvae.models import BaselineVAE, build_discriminator, build_model
from epsvae.perceptual import FeatureDistance, FeatureNet
from epsvae.train import TrainingDiverged, load_checkpoint

from conftest import tiny_config
from helpers import TINY, write_image_folder


def _train(out, *extra):
    return main(["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(out), *TINY, *extra])


def _setup(kind):
    """A tiny model with non-zero output convs (so every term reaches the encoder), D, and a frozen distance."""
    model = (EpsilonVAE if kind == "epsilon" else BaselineVAE)(tiny_config(kind))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    perceptual = FeatureDistance(FeatureNet(1, (4, 8), 10))
    return model, build_discriminator(model.config), perceptual


@pytest.mark.parametrize("kind", ["epsilon", "vae"])
def test_every_loss_term_trains_the_autoencoder_and_nothing_frozen(kind):
    model, disc, perceptual = _setup(kind)
    model.config.encoder.gaussian = False
    lc = TrainConfig().loss
    lc.x0_l1_weight = 1.0
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    _, terms, _ = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=True)
    expected = {"velocity", "x0_l1", "perceptual", "adv"} if kind == "epsilon" else {"recon", "perceptual", "adv"}
    assert set(terms) == expected | {"adv_weighted"}  # the adversarial part as weighted: a log entry
    adv_weighted = terms.pop("adv_weighted")
    assert not adv_weighted.requires_grad
    torch.testing.assert_close(adv_weighted, lc.adv_weight * terms["adv"].detach())
    for name, term in terms.items():
        model.zero_grad()
        disc.zero_grad()
        assert torch.isfinite(term) and term != 0, name
        term.backward(retain_graph=True)
        enc = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
        dec = sum(p.grad.abs().sum() for p in model.decoder.parameters() if p.grad is not None)
        assert enc > 0 and dec > 0, name
        assert all(p.grad is None for p in disc.parameters()), f"{name} reached the discriminator"
        assert all(p.grad is None for p in perceptual.parameters()), f"{name} reached the perceptual net"
    assert all(p.requires_grad for p in disc.parameters())  # unfrozen again for its own step


@pytest.mark.parametrize("kind", ["epsilon", "vae"])
def test_micro_batches_with_sliced_draws_give_the_whole_batch_gradient(kind):
    """Gradient accumulation as the engine does it: the global batch's randomness drawn once and
    sliced, each micro-batch's mean loss divided by the number of micro-batches. The gradients are
    compared in float64: the two ways must agree up to summation order, which float32 blurs at
    1e-7 on near-zero gradients (and with the thread count)."""
    model, disc, perceptual = _setup(kind)
    model.config.encoder.gaussian = True  # posterior noise is drawn too
    model.encoder = type(model.encoder)(model.config.encoder, 1)
    lc = TrainConfig().loss
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    draws = model.draw(4, (16, 16), torch.Generator().manual_seed(0))
    whole = model(x, generator=torch.Generator().manual_seed(0))  # draw() replays forward's own draws
    assert all(torch.equal(a, b) for a, b in zip(whole, model(x, **draws), strict=True))

    model, disc, perceptual, x = model.double(), disc.double(), perceptual.double(), x.double()
    draws = {k: v.double() if v.is_floating_point() else v for k, v in draws.items()}

    def grads(parts):
        model.zero_grad()
        for sl in parts:
            loss, _, _ = autoencoder_loss(
                model, x[sl], lc, perceptual, disc, True, draws={k: v[sl] for k, v in draws.items()}
            )
            (loss / len(parts)).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads([slice(0, 4)]), grads([slice(0, 2), slice(2, 4)]), strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_kl_term_trains_the_encoder():
    cfg = tiny_config()
    cfg.encoder.gaussian = True
    model = EpsilonVAE(cfg)
    _, terms, _ = autoencoder_loss(model, torch.rand(2, 1, 16, 16), TrainConfig().loss)
    terms["kl"].backward()
    assert terms["kl"] > 0 and model.encoder.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["epsilon", "vae"])
def test_discriminator_step_trains_only_the_discriminator(kind):
    model, disc, _ = _setup(kind)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    _, _, out = autoencoder_loss(model, x, TrainConfig().loss)
    for r1 in (False, True):
        model.zero_grad()
        disc.zero_grad()
        loss, terms = discriminator_loss(disc, x, out, TrainConfig().loss, r1_step=r1)
        loss.backward()
        assert torch.isfinite(loss) and ("r1" in terms) == r1
        assert all(p.grad is None for p in model.parameters())
        assert sum(p.grad.abs().sum() for p in disc.parameters()) > 0
    if r1:
        assert terms["r1"] > 0


def test_discriminator_sees_trajectory_pairs():
    real, fake = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    x_t = torch.full((2, 1, 4, 4), 0.5)
    assert torch.equal(losses.disc_pair(real, x_t)[:, 1:], x_t) and losses.disc_pair(fake, x_t).shape[1] == 2
    assert losses.generator_adv(torch.tensor([100.0])) < 1e-6  # fooled D: no generator loss
    assert losses.discriminator_adv(torch.tensor([100.0]), torch.tensor([-100.0])) < 1e-6


@pytest.mark.parametrize("kind", ["epsilon", "vae"])
def test_adaptive_adversarial_weight_is_vqgans_gradient_norm_ratio(kind):
    model, disc, perceptual = _setup(kind)
    model.config.encoder.gaussian = False
    lc = TrainConfig().loss
    lc.adv_weighting = "adaptive"
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    draws = model.draw(2, (16, 16), torch.Generator().manual_seed(0))
    loss, terms, _ = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=True, draws=draws, adv_scale=0.5)
    # by hand: the gradient norms of the other terms and of the adversarial term at the decoder's output conv
    w = model.last_layer
    other = terms["velocity" if kind == "epsilon" else "recon"] + lc.perceptual_weight * terms["perceptual"]
    g_other = torch.autograd.grad(other, w, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(terms["adv"], w, retain_graph=True)[0].norm()
    lam = g_other / (g_adv + 1e-4)
    torch.testing.assert_close(terms["adv_lambda"], lam)
    torch.testing.assert_close(loss, other + lc.adv_weight * 0.5 * lam * terms["adv"])
    torch.testing.assert_close(terms["adv_weighted"], (lc.adv_weight * 0.5 * lam * terms["adv"]).detach())
    assert not terms["adv_weighted"].requires_grad  # a log entry, not part of any graph
    # lambda is a constant: the loss's gradient is that of other + const * adv
    model.zero_grad()
    loss.backward(retain_graph=True)
    got = w.grad.clone()
    model.zero_grad()
    (other + (lc.adv_weight * 0.5 * lam).detach() * terms["adv"]).backward()
    torch.testing.assert_close(got, w.grad)
    with torch.no_grad():  # evaluation: no graph, the unweighted term
        _, terms, _ = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=True, draws=draws)
    assert terms["adv_lambda"] == 1.0


def test_adversarial_ramp_and_r1_heuristic():
    lc = TrainConfig().loss
    lc.disc_start, lc.adv_ramp = 10, 4
    assert [losses.adv_ramp(lc, s) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    lc.adv_ramp = 0
    assert [losses.adv_ramp(lc, s) for s in (9, 10)] == [0.0, 1.0]  # the hard switch, as before
    lc.adv_weight = 0.0
    assert losses.adv_ramp(lc, 100) == 0.0
    assert losses.r1_weight(lc, (32, 32), 64) == lc.r1_weight == 10.0
    lc.r1_heuristic = True  # StyleGAN2-ADA: 0.0002 * H * W / batch (0.2048 at 256 px, batch 64)
    assert losses.r1_weight(lc, (256, 256), 64) == pytest.approx(0.2048)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    model, disc, _ = _setup("epsilon")
    _, _, out = autoencoder_loss(model, x, TrainConfig().loss)
    torch.manual_seed(0)
    _, t1 = discriminator_loss(disc, x, out, lc, r1_step=True, r1_weight=1.0)
    _, t3 = discriminator_loss(disc, x, out, lc, r1_step=True, r1_weight=3.0)
    torch.testing.assert_close(t3["disc"] - t1["disc"], 0.5 * 2.0 * lc.r1_every * t1["r1"])


def test_patch_and_stylegan_heads_train_through_both_losses(fmnist, tmp_path):
    """Per-patch logits (N, P) go through the generator, discriminator and R1 terms (R1 on the mean of an
    image's patch logits: the scale of one pooled logit); a short run with the patch head and the
    other new options trains, resumes bitwise and logs the adaptive weight."""
    from epsvae.config import DiscriminatorConfig
    from epsvae.nn.discriminator import Discriminator

    model, _, perceptual = _setup("epsilon")
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    for head in ("patch", "stylegan"):
        disc = Discriminator(DiscriminatorConfig(channels=4, channel_mult=(1, 2), head=head), 1)
        _, terms, out = autoencoder_loss(model, x, TrainConfig().loss, perceptual, disc, adv_on=True)
        loss, d_terms = discriminator_loss(disc, x, out, TrainConfig().loss, r1_step=True)
        loss.backward()
        assert torch.isfinite(terms["adv"]) and d_terms["r1"] > 0, head
        assert all(p.grad is not None for p in disc.parameters()), head
    # the pooled logit is the mean of the patch logits (same weights): R1 must agree
    pool = Discriminator(DiscriminatorConfig(channels=4, channel_mult=(1, 2)), 1)
    patch = Discriminator(DiscriminatorConfig(channels=4, channel_mult=(1, 2), head="patch"), 1)
    patch.load_state_dict({k: v.view_as(patch.state_dict()[k]) for k, v in pool.state_dict().items()})
    real = torch.cat([x, x], 1).requires_grad_(True)
    t = torch.rand(4)
    torch.testing.assert_close(patch(real, t).mean(1), pool(real, t))
    torch.testing.assert_close(losses.r1_penalty(patch(real, t), real), losses.r1_penalty(pool(real, t), real))
    options = ["--set", "model.discriminator.head=patch", "--set", "model.discriminator.group_channels=2",
               "--set", "train.loss.adv_weighting=adaptive", "--set", "train.loss.adv_ramp=3",
               "--set", "train.loss.r1_heuristic=true", "--set", "model.flow.t_grid_mix=0.25",
               "--set", "model.flow.t_uniform_mix=0.25", "--set", "model.flow.prediction=x0"]  # fmt: skip
    assert _train(tmp_path / "a", "--steps", "2", *options) == 0
    assert _train(tmp_path / "a", "--steps", "4", *options) == 0
    assert _train(tmp_path / "b", "--steps", "4", *options) == 0
    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    lam = [r["adv_lambda"] for r in rows if "adv_lambda" in r]
    assert len(lam) == 3 and all(v > 0 for v in lam)  # steps 1..3 are adversarial (disc_start=1)
    # another mixed precision in the same process (Accelerate keeps one per process unless reset)
    assert _train(tmp_path / "c", "--steps", "3", "--set", "train.mixed_precision=bf16") == 0
    rows = [json.loads(line) for line in (tmp_path / "c" / "stats.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_resume_is_bitwise_identical(fmnist, tmp_path, capsys):
    assert _train(tmp_path / "a", "--steps", "3") == 0
    assert _train(tmp_path / "a", "--steps", "6") == 0
    assert _train(tmp_path / "b", "--steps", "6") == 0
    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    assert a == b
    # one sessions.jsonl line per session: where it trained, so a resume elsewhere is visible
    sessions = [json.loads(line) for line in (tmp_path / "a" / "sessions.jsonl").read_text().splitlines()]
    assert [s["step"] for s in sessions] == [0, 3]
    assert sessions[0]["cpu"] and sessions[0]["device"] == "cpu" and sessions[0]["gpu"] is None
    assert sessions[0]["torch"] == torch.__version__ and sessions[0]["world_size"] == 1
    assert sessions[0]["cpu_flags"] == sessions[1]["cpu_flags"]
    assert "another kind of machine" not in capsys.readouterr().out  # same machine: no note
    stats = [json.loads(line) for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    rows = [s for s in stats if "loss" in s]
    assert [s["step"] for s in rows] == [1, 2, 3, 4, 5, 6]
    assert {"velocity", "perceptual", "adv", "disc", "d_real", "images_per_s", "peak_memory_mb"} <= set(rows[-1])
    assert len(rows[-1]["velocity_by_t"]) == 5
    # validation on the held-out batch at the end of each session (eval_every is 500)
    checks = [s for s in stats if "val_psnr_1" in s]
    assert [s["step"] for s in checks] == [3, 6]
    assert all(np.isfinite(s["val_fd_indep_3"]) and s["val_psnr_3"] > 0 for s in checks)
    assert (tmp_path / "a" / "samples" / "step0000000.png").is_file()
    assert (tmp_path / "a" / "tb").is_dir()
    # export = the EMA weights of the checkpoint, loadable
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "model.safetensors").read_bytes() == a
    assert isinstance(load_pretrained(tmp_path / "exp"), EpsilonVAE)


def test_resume_with_other_config_is_refused(fmnist, tmp_path, capsys):
    assert _train(tmp_path / "r", "--steps", "1") == 0
    capsys.readouterr()
    assert _train(tmp_path / "r", "--steps", "2", "--set", "train.lr=0.1") == 2
    assert "only --steps may change" in capsys.readouterr().err
    assert main(["train", "--preset", "eps-fmnist", "--out", str(tmp_path / "n"), "--set", "train.lerning=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "nothing")]) == 2
    assert "give --preset" in capsys.readouterr().err


def test_nan_stops_the_run_and_keeps_the_checkpoint(fmnist, tmp_path, monkeypatch, capsys):
    assert _train(tmp_path / "r", "--steps", "2") == 0
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    original = losses.velocity_mse
    monkeypatch.setattr(losses, "velocity_mse", lambda a, b: (a - b).pow(2).mean() * float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 2.*checkpoint .* is intact"):
        from epsvae.train import prepare_run, train

        train(tmp_path / "r", prepare_run(tmp_path / "r", steps=4), progress=False)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "r")["step"] == 2
    # (not monkeypatch.undo(): it would also undo the private EPSVAE_CACHE and leak into ~/.cache)
    monkeypatch.setattr(losses, "velocity_mse", original)
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "m")]) == 0
    # through the CLI the same stop is a one-line error, not a traceback
    monkeypatch.setattr(losses, "velocity_mse", lambda a, b: (a - b).pow(2).mean() * float("nan"))
    capsys.readouterr()
    assert _train(tmp_path / "r", "--steps", "4") == 2
    assert "non-finite loss" in capsys.readouterr().err


def test_vae_trains_on_a_folder_with_a_corrupt_image(tmp_path, monkeypatch):
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "imgs", n=6, size=24, corrupt=1)
    args = ["train", "--preset", "vae-fmnist", "--data", f"folder:{root}", "--out", str(tmp_path / "r")]
    args += ["--steps", "3", "--set", "train.loss.perceptual=none", *TINY[:8]]
    args += ["--set", "model.image_channels=3", "--batch-size", "7", "--no-progress"]
    assert main(args) == 0
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["skipped_images"] >= 1
    logged = (tmp_path / "r" / "skipped_images.txt").read_text().splitlines()
    assert len(logged) == final["skipped_images"] and all("broken0.jpg\t" in line for line in logged)
    assert isinstance(load_pretrained(tmp_path / "r" / "model"), BaselineVAE)


def test_reconstruct_writes_uint8_arrays(fmnist, tmp_path):
    assert _train(tmp_path / "r", "--steps", "1") == 0
    out = tmp_path / "rec.npz"
    args = ["reconstruct", "--model", str(tmp_path / "r" / "model"), "--data", "fashion-mnist", "--split", "test"]
    assert main([*args, "--limit", "5", "--steps", "3", "--seed", "0", "--out", str(out)]) == 0
    import numpy as np

    arrays = np.load(out)
    assert arrays["original"].dtype == np.uint8 and arrays["original"].shape == (5, 1, 32, 32)
    assert arrays["reconstruction"].shape == (5, 1, 32, 32)
    again = tmp_path / "rec2.npz"
    assert main([*args, "--limit", "5", "--steps", "3", "--seed", "0", "--out", str(again)]) == 0
    assert (np.load(again)["reconstruction"] == arrays["reconstruction"]).all()


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "epsvae", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_global_batch_trains_the_same_weights_however_it_is_split(fmnist, tmp_path):
    """train.batch_size is the global batch: one process, one process in two micro-batches, two
    processes (torchrun), and a run started on two processes and resumed on one train the same weights."""
    args = ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", *TINY, "--batch-size", "8"]
    assert main([*args, "--out", str(tmp_path / "one"), "--steps", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "accum"), "--steps", "3", "--set", "train.micro_batch_size=4"]) == 0
    _torchrun(*args, "--out", str(tmp_path / "two"), "--steps", "3")
    _torchrun(*args, "--out", str(tmp_path / "mixed"), "--steps", "2")
    assert main([*args, "--out", str(tmp_path / "mixed"), "--steps", "3"]) == 0
    finals = {k: json.loads((tmp_path / k / "final.json").read_text()) for k in ("one", "accum", "two")}
    assert [f["effective_batch_size"] for f in finals.values()] == [8, 8, 8]
    assert (finals["accum"]["accumulation_steps"], finals["two"]["world_size"]) == (2, 2)
    assert len(set(finals["two"]["rank_param_digests"])) == 1  # the two ranks stayed in sync
    losses_of = lambda run: [  # noqa: E731  the logged loss of each step, averaged over the global batch
        (r["loss"], r.get("disc", 0.0))
        for r in map(json.loads, (tmp_path / run / "stats.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    for other in ("accum", "two", "mixed"):
        np.testing.assert_allclose(losses_of(other), losses_of("one"), rtol=2e-5, err_msg=other)
    # the trained networks compute the same functions (compared on outputs: a bias right before a
    # GroupNorm has a zero gradient in exact arithmetic, so Adam moves it by rounding noise alone)
    cfg = from_dict(RunConfig, json.loads((tmp_path / "one" / "config.json").read_text())).model
    x, t = torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4)
    noise = torch.randn(4, 1, 32, 32)

    def outputs(run):
        state = load_checkpoint(tmp_path / run)
        model, disc = build_model(cfg), build_discriminator(cfg)
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        with torch.no_grad():
            out = model(x, t=t, noise=noise)
            return out.v_pred, disc(torch.cat([x, out.x_t], 1), t)

    reference = outputs("one")
    for other in ("accum", "two", "mixed"):
        for got, want in zip(outputs(other), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


def test_lpips_vgg_without_weights_or_package_fails_clearly(tmp_path, monkeypatch):
    from epsvae.perceptual import PerceptualError, build_perceptual

    monkeypatch.setenv("EPSVAE_VGG16_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(PerceptualError, match=r"pip install 'epsvae\[lpips\]'|missing.pth does not exist"):
        build_perceptual("lpips-vgg")
    with pytest.raises(PerceptualError, match="unknown perceptual backbone"):
        build_perceptual("vgg19")
    with pytest.raises(PerceptualError, match="epsvae features train"):
        build_perceptual(f"features:{tmp_path / 'nothing'}")


def test_feature_distance_is_lpips_formula_and_frozen():
    net = FeatureNet(1, (4, 8), 10)
    dist = FeatureDistance(net)
    x = torch.rand(3, 1, 16, 16, requires_grad=True)
    d = dist(x, x.detach())
    assert torch.allclose(d, torch.zeros(3), atol=1e-6)
    y = torch.rand(3, 1, 16, 16)
    d = dist(x, y)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())
    assert not dist.train().training  # stays in eval mode


def test_checkpoint_from_another_config_or_damaged_fails_clearly(fmnist, tmp_path, capsys):
    assert _train(tmp_path / "r", "--steps", "1") == 0
    cfg_path = tmp_path / "r" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["channels"] = 8  # the config no longer matches the weights
    cfg_path.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "r"), "--steps", "2", "--no-progress"]) == 2
    assert "(model.decoder.channels: 4 in the checkpoint, 8 now)" in capsys.readouterr().err
    # a checkpoint from before checkpoints carried their config: the weights' shapes tell
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "r" / "checkpoint.pt")
    assert main(["train", "--out", str(tmp_path / "r"), "--steps", "2", "--no-progress"]) == 2
    assert "does not match this model's config" in capsys.readouterr().err
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"truncated")
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "m")]) == 2
    assert "not a readable epsvae training checkpoint" in capsys.readouterr().err


def test_features_auto_is_keyed_by_the_data_it_was_trained_on(fmnist, tmp_path):
    from epsvae.features import auto_network_dir, dataset_fingerprint

    first = auto_network_dir("perceptual", "fashion-mnist", 32, 1)
    assert first.name == f"perceptual-fashion-mnist-32px-1c-{dataset_fingerprint('fashion-mnist')}"
    assert auto_network_dir("indep", "fashion-mnist", 32, 1).name.startswith("indep-fashion-mnist-")
    # other files under the same spec (here: a larger stand-in) -> another cache entry
    from helpers import write_fake_fashion_mnist

    write_fake_fashion_mnist(fmnist, n_train=80)
    assert auto_network_dir("perceptual", "fashion-mnist", 32, 1) != first


def test_distill_trains_a_one_step_student_of_the_teacher(fmnist, tmp_path, capsys):
    """`epsvae distill`: the student starts from the teacher, keeps its encoder, learns the teacher's
    3-step decode from the same noise in one step (the training estimate at t = 1 is exactly the
    student's 1-step decode), and exports a model that decodes in 1 step by default."""
    assert _train(tmp_path / "teacher", "--steps", "2") == 0
    teacher_dir = tmp_path / "teacher" / "model"
    teacher = load_pretrained(teacher_dir)
    # the objective as the training loop builds it, checked by hand on the teacher as its own student
    from epsvae.train import distill_target, one_step_draws

    x = torch.rand(3, 1, 32, 32) * 2 - 1
    draws = one_step_draws(teacher.draw(3, (32, 32), torch.Generator().manual_seed(0)))
    assert torch.equal(draws["t"], torch.ones(3))
    lc = TrainConfig().loss
    _, terms, out = autoencoder_loss(teacher, x, lc, draws=draws, target=distill_target(teacher, 3))
    one_step = teacher.decode(teacher.encode(x), steps=1, noise=draws["noise"])
    torch.testing.assert_close(out.x0_hat, one_step, rtol=1e-5, atol=1e-5)
    goal = teacher.decode(teacher.encode(x), steps=3, noise=draws["noise"])
    torch.testing.assert_close(terms["distill"], (one_step - goal).pow(2).mean(), rtol=1e-5, atol=1e-7)

    args = ["distill", "--model", str(teacher_dir), "--out", str(tmp_path / "s"), "--preset", "eps-fmnist"]
    assert main([*args, *TINY, "--steps", "3", "--teacher-steps", "2"]) == 0
    assert "decodes with 1 step by default" in capsys.readouterr().out
    student = load_pretrained(tmp_path / "s" / "model")
    meta = json.loads((tmp_path / "s" / "model" / "config.json").read_text())
    assert student.config.flow.steps == 1 and meta["_distilled_from"]["teacher_steps"] == 2
    run = json.loads((tmp_path / "s" / "config.json").read_text())["train"]
    assert run["loss"]["velocity_weight"] == 0 and run["distill_from"] == str(teacher_dir.resolve())
    from epsvae.presets import run_config

    recipe = run_config("eps-fmnist").train  # a fine-tune: a quarter of the recipe's learning rates
    assert (run["lr"], run["disc_lr"]) == (recipe.lr / 4, recipe.disc_lr / 4) == (5e-5, 5e-5)
    for a, b in zip(student.encoder.state_dict().values(), teacher.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # frozen: the teacher's latents stay valid
    assert not all(
        torch.equal(a, b)
        for a, b in zip(student.decoder.state_dict().values(), teacher.decoder.state_dict().values(), strict=True)
    )
    rows = [json.loads(line) for line in (tmp_path / "s" / "stats.jsonl").read_text().splitlines()]
    assert all(r["distill"] >= 0 for r in rows if "loss" in r)
    capsys.readouterr()  # resuming with another teacher is refused; the same one given as its run directory is not
    shutil.copytree(teacher_dir, tmp_path / "other")
    assert main(["distill", "--model", str(tmp_path / "other"), "--out", str(tmp_path / "s"), "--steps", "4"]) == 2
    assert "holds a run distilling" in capsys.readouterr().err
    assert main(["distill", "--model", str(tmp_path / "teacher"), "--out", str(tmp_path / "s"), "--steps", "4"]) == 0
    # without --teacher-steps the teacher's own step count is used, and recorded
    assert main(["distill", "--model", str(teacher_dir), "--out", str(tmp_path / "s2"), "--preset", "eps-fmnist",
                 *TINY, "--steps", "1", "--set", "train.lr=2e-4"]) == 0  # fmt: skip
    meta = json.loads((tmp_path / "s2" / "model" / "config.json").read_text())
    assert meta["_distilled_from"]["teacher_steps"] == teacher.config.flow.steps == 3
    run = json.loads((tmp_path / "s2" / "config.json").read_text())["train"]
    assert (run["lr"], run["disc_lr"]) == (2e-4, 5e-5)  # --set wins over the distillation default
    # 0.3 of the recipe's steps by default (600 for eps-fmnist, the measured budget); --steps wins
    from epsvae.train import prepare_distill

    assert prepare_distill(tmp_path / "s3", teacher_dir, "eps-fmnist").train.steps == 600
    assert prepare_distill(tmp_path / "s4", teacher_dir, "eps-fmnist", steps=7).train.steps == 7
    # a VAE cannot be a teacher; a teacher of no preset's architecture needs --preset (the recipe)
    assert main(["train", "--preset", "vae-fmnist", "--out", str(tmp_path / "v"), "--steps", "1", *TINY[:8]]) == 0
    capsys.readouterr()
    assert main(["distill", "--model", str(tmp_path / "v" / "model"), "--out", str(tmp_path / "x")]) == 2
    assert "only an ε-VAE" in capsys.readouterr().err
    assert main(["distill", "--model", str(teacher_dir), "--out", str(tmp_path / "y")]) == 2
    assert "give --preset" in capsys.readouterr().err


def test_distillation_loss_decreases_on_a_tiny_model():
    """A tiny student (started from its teacher, encoder frozen) trained on the distill term alone
    gets its one-step decode closer to the teacher's 3-step decode of the same noise."""
    import copy

    from epsvae.train import distill_target, one_step_draws

    torch.manual_seed(0)
    teacher = EpsilonVAE(tiny_config())
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.1)
    teacher.requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    student.encoder.requires_grad_(False)
    lc = TrainConfig().loss
    lc.velocity_weight, lc.perceptual_weight = 0.0, 0.0
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    target = distill_target(teacher, 3)
    losses_seen = []
    for step in range(40):
        draws = one_step_draws(student.draw(8, (16, 16), torch.Generator().manual_seed(step % 4)))
        loss, terms, _ = autoencoder_loss(student, x, lc, draws=draws, target=target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses_seen.append(terms["distill"].item())
        assert all(p.grad is None for p in student.encoder.parameters())
    assert loss == terms["distill"]  # the only weighted term
    assert sum(losses_seen[-4:]) < 0.5 * sum(losses_seen[:4]), losses_seen


def test_quickstart_precision_bf16_on_a_native_bf16_cpu_kept_on_resume(fmnist, tmp_path, monkeypatch, capsys):
    """The quickstart trains in bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX), in fp32
    elsewhere or when asked; a resumed run keeps the precision it started with."""
    import epsvae.quickstart as qs

    monkeypatch.setattr(qs.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(qs, "native_bf16_cpu", lambda: True)
    assert qs.quickstart_precision() == "bf16" and qs.quickstart_precision("no") == "no"
    # the model shrunk as in TINY: bf16 on a CPU without bf16 instructions is emulated and slow
    tiny = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"] + ["train.batch_size=4"]
    result = qs.quickstart(tmp_path / "q", steps=2, n_eval=16, overrides=tiny)
    config = lambda d: json.loads((d / "config.json").read_text())["train"]["mixed_precision"]  # noqa: E731
    assert result["mixed_precision"] == "bf16" == config(tmp_path / "q") and result["trained_steps"] == 2
    assert json.loads((tmp_path / "q" / "config.json").read_text())["model"]["encoder"]["channels"] == 4
    assert all(np.isfinite(r["psnr_db"]) and np.isfinite(r["fd_indep"]) for r in result["rows"])
    monkeypatch.setattr(qs, "native_bf16_cpu", lambda: False)
    assert qs.quickstart(tmp_path / "q", steps=3, n_eval=16)["mixed_precision"] == "bf16"  # resumed as started
    capsys.readouterr()
    assert qs.quickstart(tmp_path / "q", steps=4, n_eval=16, precision="no")["mixed_precision"] == "bf16"
    assert "resumes in the precision it started with (bf16)" in capsys.readouterr().out
    assert qs.quickstart_precision() == "no"
    assert main(["quickstart", "--out", str(tmp_path / "p"), "--steps", "1", "--precision", "no"]) == 0
    assert config(tmp_path / "p") == "no"


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned(fmnist, tmp_path, monkeypatch, capsys):
    """bf16 autocast on a CPU that only emulates bf16 (measured 9x slower than fp32,
    docs/cpu_step.md) trains, with a warning naming the fix; native bf16, fp32 or a GPU: no warning."""
    import epsvae.engine as engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "native_bf16_cpu", lambda: False)
    message = engine.emulated_bf16_warning("bf16", cpu)
    assert "without bf16 instructions" in message and "train.mixed_precision=no" in message
    assert engine.emulated_bf16_warning("no", cpu) is None and engine.emulated_bf16_warning("bf16", cuda) is None
    args = ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", *TINY, "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "emulated"), "--set", "train.mixed_precision=bf16"]) == 0
    assert message in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "fp32"), "--set", "train.mixed_precision=no"]) == 0
    assert "without bf16 instructions" not in capsys.readouterr().out
    monkeypatch.setattr(engine, "native_bf16_cpu", lambda: True)
    assert engine.emulated_bf16_warning("bf16", cpu) is None


def test_quickstart_says_where_a_time_budget_stopped_it(tmp_path):
    """A budget that stops the run early is reported with the pace and how to go on; a run that
    reached its steps, or trained nothing this call, gets no such line."""
    from epsvae.quickstart import budget_hint

    tc = TrainConfig(steps=2000, warmup=200)
    tc.loss.disc_start = 500
    hint = "\n".join(budget_hint({"step": 179, "steps_this_session": 179, "seconds": 600.0}, tc, tmp_path))
    assert "step 179 of the preset's 2000 (3.35 s per step" in hint
    assert "200-step warm-up" in hint and "adversarial term starts at step 500" in hint
    assert f"resumes the run ({tmp_path})" in hint
    later = "\n".join(budget_hint({"step": 796, "steps_this_session": 100, "seconds": 90.0}, tc, tmp_path))
    assert "(0.90 s per step on this machine)" in later and "warm-up" not in later
    assert "README" in hint and "README" not in budget_hint({"step": 9, "steps_this_session": 9, "seconds": 9.0},
                                                             tc, tmp_path, "vae-fmnist")[-1]  # fmt: skip
    tc.loss.adv_weight = 0
    assert "adversarial" not in budget_hint({"step": 9, "steps_this_session": 9, "seconds": 9.0}, tc, tmp_path)[-1]
    assert budget_hint({"step": 2000, "steps_this_session": 5, "seconds": 5.0}, tc, tmp_path) == []
    assert budget_hint({"step": 179, "steps_this_session": 0, "seconds": 0.0}, tc, tmp_path) == []
