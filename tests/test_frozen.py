"""A decoder for a frozen encoder: diffusers AutoencoderKL conversion, and training from it or from an epsvae model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from epsvae import EpsilonVAE, load_pretrained
from epsvae.cli import main
from epsvae.frozen import read_frozen_encoder
from epsvae.nn.autoencoder import Encoder

from conftest import need
from helpers import TINY, write_photo_folder

TINY_DECODER = [  # the encoder comes from the frozen source
    "--set", "model.decoder.channels=4", "--set", "model.decoder.head_channels=4",
    "--set", "model.decoder.num_res_blocks=1", "--set", "model.decoder.channel_mult=[1,1,1,1]",
    "--set", "model.decoder.attn_levels=[3]", "--set", "model.discriminator.channels=4",
    "--set", "model.discriminator.channel_mult=[1,1]", "--set", "train.loss.disc_start=1", "--set", "train.warmup=2",
    "--set", "train.log_every=1", "--set", "train.loss.perceptual=none", "--set", "train.loss.perceptual_weight=0",
    "--set", "train.eval_every=0", "--batch-size", "2", "--no-progress",
]  # fmt: skip


def _tiny_kl(path, seed=0):
    """A randomly initialised AutoencoderKL with SD's layout at toy width, saved as diffusers saves it."""
    diffusers = need("diffusers")
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        scaling_factor=0.2,
        shift_factor=0.1,
    )
    for p in vae.parameters():  # away from the zero/unit init, so every weight matters
        torch.nn.init.normal_(p, std=0.05)
    vae.save_pretrained(path)
    return vae.eval()


def test_converted_sd_encoder_computes_diffusers_posterior(tmp_path):
    vae = _tiny_kl(tmp_path / "kl")
    frozen = read_frozen_encoder(tmp_path / "kl")
    assert frozen.source["format"] == "diffusers" and frozen.encoder.gaussian and frozen.encoder.downsample == 8
    assert frozen.latent_mean == (0.1,) * 4 and frozen.latent_std == pytest.approx((5.0,) * 4)
    enc = Encoder(frozen.encoder, 3)
    enc.load_state_dict(frozen.state)
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        mean, logvar = enc(x).chunk(2, dim=1)
        ref = vae.encode(x).latent_dist
    torch.testing.assert_close(mean, ref.mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logvar.clamp(-30, 20), ref.logvar, atol=1e-5, rtol=1e-4)
    # a whole pipeline directory resolves to its vae/
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "kl").rename(tmp_path / "pipe" / "vae")
    assert read_frozen_encoder(tmp_path / "pipe").source["path"].endswith("vae")


def test_unconvertible_autoencoders_are_refused(tmp_path):
    _tiny_kl(tmp_path / "kl")
    cfg = json.loads((tmp_path / "kl" / "config.json").read_text())
    (tmp_path / "kl" / "config.json").write_text(json.dumps({**cfg, "norm_num_groups": 16}))
    with pytest.raises(ValueError, match="needs 32 groups"):
        read_frozen_encoder(tmp_path / "kl")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_frozen_encoder(tmp_path / "nothing")


def test_decoder_for_a_frozen_diffusers_encoder_trains_exports_and_reconstructs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    _tiny_kl(tmp_path / "kl")
    photos = write_photo_folder(tmp_path / "photos", n=12)
    run = tmp_path / "run"
    argv = ["train", "--preset", "eps-decoder-sd-B", "--frozen-encoder", str(tmp_path / "kl"), "--data",
            f"folder:{photos}", "--resolution", "32", "--out", str(run), "--steps", "2", *TINY_DECODER]  # fmt: skip
    assert main(argv) == 0
    assert "training the decoder only" in capsys.readouterr().out
    converted = read_frozen_encoder(tmp_path / "kl").state
    exported = load_file(str(run / "model" / "model.safetensors"))
    for k, v in converted.items():  # the encoder did not move, in the weights and in the EMA
        assert torch.equal(exported[f"encoder.{k}"], v), k
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(state["model"][f"encoder.{k}"], v) for k, v in converted.items())
    init = EpsilonVAE(load_pretrained(run / "model").config).decoder.state_dict()
    assert any(not torch.equal(init[k], exported[f"decoder.{k}"]) for k in init)  # the decoder trained
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["_encoder_source"] == {"frozen": True, "path": str((tmp_path / "kl").resolve())}
    assert meta["latent_std"] == pytest.approx([5.0] * 4) and meta["encoder"]["gaussian"]
    out = tmp_path / "rec.npz"
    assert main(["reconstruct", "--model", str(run / "model"), "--data", f"folder:{photos}", "--out", str(out),
                 "--limit", "2", "--steps", "1"]) == 0  # fmt: skip
    # the run resumes with the same frozen encoder, and refuses another
    assert main([*argv[: -len(TINY_DECODER) - 2], "--steps", "3", *TINY_DECODER]) == 0
    _tiny_kl(tmp_path / "kl2", seed=1)
    other = [a if a != str(tmp_path / "kl") else str(tmp_path / "kl2") for a in argv]
    capsys.readouterr()
    assert main(other) == 2 and "only --steps may change" in capsys.readouterr().err


def test_decoder_for_a_frozen_epsvae_encoder(fmnist, tmp_path):
    base = ["--data", "fashion-mnist", *TINY]
    assert main(["train", "--preset", "vae-fmnist", "--out", str(tmp_path / "vae"), "--steps", "1", *base]) == 0
    source = load_file(str(tmp_path / "vae" / "model" / "model.safetensors"))
    run = tmp_path / "eps"
    argv = ["train", "--preset", "eps-fmnist", "--frozen-encoder", str(tmp_path / "vae" / "model"),
            "--out", str(run), "--steps", "2", *base]  # fmt: skip
    assert main(argv) == 0
    exported = load_file(str(run / "model" / "model.safetensors"))
    enc = [k for k in source if k.startswith("encoder.")]
    assert enc and all(torch.equal(exported[k], source[k]) for k in enc)
    assert main(["eval", "--model", str(run / "model"), "--data", "fashion-mnist", "--out", str(tmp_path / "e.json"),
                 "--limit", "8", "--seeds", "0", "--steps", "1"]) == 0  # fmt: skip
