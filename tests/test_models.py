import json

import pytest
import torch

from epsvae import BaselineVAE, ConfigError, EpsilonVAE, load_pretrained
from epsvae.config import DecoderConfig
from epsvae.models import build_discriminator
from epsvae.nn.layers import AttentionBlock, ResBlock

from conftest import tiny_config


def test_component_shapes():
    cfg = tiny_config(channels=3, size=16)
    model = EpsilonVAE(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 2, 8, 8)
    t = torch.rand(2)
    assert model.velocity(x, t, z).shape == x.shape
    out = model(x)
    assert out.x0_hat.shape == out.v_pred.shape == out.v_target.shape == out.x_t.shape == x.shape
    assert out.t.shape == (2,) and out.kl.shape == ()
    disc = build_discriminator(cfg)
    assert disc(torch.cat([x, out.x_t], 1), t).shape == (2,)
    vae = BaselineVAE(tiny_config("vae", channels=3))
    assert vae.decode(vae.encode(x)).shape == x.shape
    assert vae(x).x_hat.shape == x.shape


def test_blocks_shapes_and_resampling():
    emb = torch.randn(2, 8)
    x = torch.randn(2, 4, 8, 8)
    assert ResBlock(4, 6, 8, "down")(x, emb).shape == (2, 6, 4, 4)
    assert ResBlock(4, 4, 8, "up")(x, emb).shape == (2, 4, 16, 16)
    assert ResBlock(4, 6)(x).shape == (2, 6, 8, 8)
    assert AttentionBlock(4, 2)(x).shape == x.shape
    with pytest.raises(ValueError, match="conditioned"):
        ResBlock(4, 4, 8)(x)


def test_attention_matches_reference_and_runs_on_fused_kernels():
    """Self-attention over positions, per head, equals the explicit softmax(QK^T/sqrt(d))V; and
    its q/k/v are laid out for the fused kernels (flash attention refuses strided inputs, and
    the math fallback holds the HW x HW matrix: 75 GiB for eps-sd-B at 512 px on a GPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = AttentionBlock(8, 4).eval()
    torch.nn.init.normal_(block.proj.weight)  # zero-initialised: the branch would be invisible
    x = torch.randn(2, 8, 5, 3)
    with torch.no_grad():
        qkv = block.qkv(block.norm(x)).reshape(2, 3, 2, 4, 15)  # (N, q/k/v, heads, C/heads, HW)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        attn = torch.softmax(q.transpose(-1, -2) @ k / 2.0, dim=-1)  # (N, heads, HW, HW)
        ref = x + block.proj((v @ attn.transpose(-1, -2)).reshape(2, 8, 5, 3))
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-4)


def test_decode_any_resolution_multiple_of_factor():
    model = EpsilonVAE(tiny_config())
    z = torch.randn(1, 2, 12, 4)
    assert model.decode(z, steps=1).shape == (1, 1, 24, 8)


def test_decode_reproducible_with_generator_and_varies_without():
    model = EpsilonVAE(tiny_config())
    # the U-Net's output conv starts at zero; give it weights so decoding depends on the noise
    torch.nn.init.normal_(model.decoder.out_conv.weight, std=0.1)
    z = model.encode(torch.rand(2, 1, 16, 16))
    a = model.decode(z, steps=3, generator=torch.Generator().manual_seed(7))
    b = model.decode(z, steps=3, generator=torch.Generator().manual_seed(7))
    c = model.decode(z, steps=3)
    d = model.decode(z, steps=3)
    assert torch.equal(a, b)
    assert not torch.allclose(c, d)


def test_decode_grids_and_errors():
    model = EpsilonVAE(tiny_config())
    z = torch.randn(1, 2, 8, 8)
    g = torch.Generator().manual_seed(0)
    custom = model.decode(z, grid=torch.tensor([1.0, 0.5, 0.0]), generator=g)
    g = torch.Generator().manual_seed(0)
    same = model.decode(z, steps=2, grid="uniform", generator=g)
    assert torch.allclose(custom, same)
    with pytest.raises(ValueError, match="exactly 1 down to exactly 0"):
        model.decode(z, grid=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="unknown sampler"):
        model.decode(z, sampler="ddim")
    with pytest.raises(ValueError, match=r"latents of shape \(N, 2, h, w\)"):
        model.decode(torch.randn(1, 3, 8, 8))


def test_one_step_decode_is_x0_estimate_from_noise():
    """With 1 step, decode(z) = (ε - 1 * v(ε, 1, z)) / γ: the network's one-step estimate."""
    model = EpsilonVAE(tiny_config(gamma=0.6))
    torch.nn.init.normal_(model.decoder.out_conv.weight, std=0.1)
    z = torch.randn(2, 2, 8, 8)
    eps = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = (eps - model.velocity(eps, torch.ones(2), z)) / 0.6
    assert torch.allclose(model.decode(z, steps=1, noise=eps), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 15, 16), (2, 1, 16, 17)])
def test_wrong_spatial_size_names_the_factor(shape):
    model = EpsilonVAE(tiny_config())
    with pytest.raises(ValueError, match="downsample factor 2"):
        model.encode(torch.randn(shape))


def test_wrong_channels_or_rank():
    model = BaselineVAE(tiny_config("vae"))
    with pytest.raises(ValueError, match="1 image channel"):
        model.encode(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model.encode(torch.randn(1, 16, 16))


@pytest.mark.parametrize("cls,kind", [(EpsilonVAE, "epsilon"), (BaselineVAE, "vae")])
def test_save_load_round_trip_identical(tmp_path, cls, kind):
    model = cls(tiny_config(kind)).eval()
    for p in model.parameters():  # non-trivial weights everywhere, zero-init convs included
        torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["kind"] == kind
    loaded = cls.from_pretrained(tmp_path / "m")
    also = load_pretrained(tmp_path / "m")
    assert type(also) is cls and loaded.config == model.config
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    z = model.encode(x)
    assert torch.equal(z, loaded.encode(x))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.decode(z, generator=g1), loaded.decode(z, generator=g2))


def test_loading_other_config_or_class_fails_clearly(tmp_path):
    EpsilonVAE(tiny_config()).save_pretrained(tmp_path / "eps")
    BaselineVAE(tiny_config("vae")).save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError, match="holds a BaselineVAE"):
        EpsilonVAE.from_pretrained(tmp_path / "vae")
    # weights from one config beside the config.json of another
    other = tiny_config()
    other.decoder.channels = 8
    bigger = EpsilonVAE(other)
    bigger.save_pretrained(tmp_path / "big")
    (tmp_path / "eps" / "model.safetensors").write_bytes((tmp_path / "big" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="(?s)does not match this model's config.*shape mismatches"):
        EpsilonVAE.from_pretrained(tmp_path / "eps")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        EpsilonVAE.from_pretrained(tmp_path / "nothing")
    (tmp_path / "vae" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        BaselineVAE.from_pretrained(tmp_path / "vae")


def test_wrong_kind_config_rejected():
    with pytest.raises(ConfigError, match="use BaselineVAE"):
        EpsilonVAE(tiny_config("vae"))


def test_gaussian_posterior_kl_and_sampling():
    cfg = tiny_config()
    cfg.encoder.gaussian = True
    model = EpsilonVAE(cfg)
    x = torch.rand(2, 1, 16, 16)
    mean, logvar = model.encode_posterior(x)
    assert mean.shape == logvar.shape == (2, 2, 8, 8)
    assert torch.equal(model.encode(x), mean)
    assert not torch.equal(model.encode(x, sample=True), mean)
    out = model(x)
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
    assert torch.allclose(out.kl, expected, atol=1e-6) and out.kl > 0


def test_training_forward_targets_are_consistent():
    model = EpsilonVAE(tiny_config(gamma=0.6))
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    noise, t = torch.randn_like(x), torch.tensor([0.1, 0.5, 0.9])
    out = model(x, t=t, noise=noise)
    assert torch.allclose(out.v_target, noise - 0.6 * x)
    assert torch.allclose(out.x_t, (1 - t[:, None, None, None]) * 0.6 * x + t[:, None, None, None] * noise)
    # a perfect velocity would give back x exactly
    assert torch.allclose((out.x_t - t[:, None, None, None] * out.v_target) / 0.6, x, atol=1e-5)


def test_gradients_reach_encoder_and_decoder():
    model = EpsilonVAE(tiny_config())
    x = torch.rand(2, 1, 16, 16)

    def loss():
        model.zero_grad()
        out = model(x)
        ((out.v_pred - out.v_target) ** 2).mean().backward()

    # ADM's output conv starts at zero: at step 0 only it receives gradient
    loss()
    assert model.decoder.out_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())
    # once it is non-zero, the loss trains the encoder (through z) and the whole U-Net
    torch.nn.init.normal_(model.decoder.out_conv.weight, std=0.1)
    for block in model.decoder.modules():
        if isinstance(block, ResBlock):
            torch.nn.init.normal_(block.conv2.weight, std=0.1)
    loss()
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0
    assert model.decoder.enc["l0_conv"].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_same_gradients():
    cfg = tiny_config()
    model = EpsilonVAE(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, noise = torch.rand(2, 1, 16, 16), torch.rand(2), torch.randn(2, 1, 16, 16)

    def grads():
        model.zero_grad()
        out = model(x, t=t, noise=noise)
        ((out.v_pred - out.v_target) ** 2).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.decoder.cfg.grad_checkpointing = True
    ckpt = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt, strict=True))
    assert all(g.abs().sum() > 0 for g in ckpt[:3])


def test_discriminator_heads_and_group_norm_width():
    from epsvae.config import DiscriminatorConfig
    from epsvae.nn.discriminator import Discriminator, minibatch_std

    pair, t = torch.randn(4, 2, 16, 16), torch.rand(4)
    shapes = {"pool": (4,), "stylegan": (4,), "patch": (4, 16)}  # 2 blocks: 16 px -> 4x4 = 16 patches
    for head, shape in shapes.items():
        d = Discriminator(DiscriminatorConfig(channels=8, channel_mult=(1, 2), head=head), 1)
        assert d(pair, t).shape == shape, head
    # groups: default 32 groups (instance norm at <= 32 channels); group_channels=4 -> 2 groups at 8 channels
    d = Discriminator(DiscriminatorConfig(channels=8, channel_mult=(1, 2), group_channels=4), 1)
    assert d.blocks[0].norm1.norm.num_groups == 2 and d.blocks[1].norm1.norm.num_groups == 2
    assert Discriminator(DiscriminatorConfig(channels=8, channel_mult=(1, 2)), 1).blocks[0].norm1.norm.num_groups == 8
    with pytest.raises(ValueError, match="at least 16 px"):
        Discriminator(DiscriminatorConfig(channels=8, channel_mult=(1, 2), head="stylegan"), 1)(pair[:, :, :8, :8], t)
    # minibatch std: the std over each group of consecutive images, averaged, as an extra channel
    x = torch.randn(6, 3, 2, 2)
    y = minibatch_std(x, 4)  # 6 images: groups of 3 (the largest divisor of 6 not above 4)
    assert y.shape == (6, 4, 2, 2)
    x8 = torch.randn(8, 3, 2, 2)  # micro-batches of a multiple of the group size: the same groups
    torch.testing.assert_close(torch.cat([minibatch_std(x8[:4], 4), minibatch_std(x8[4:], 4)]), minibatch_std(x8, 4))
    for i in range(6):
        members = x[3 * (i // 3) : 3 * (i // 3) + 3]
        ref = (members.var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[i, 3], ref.expand(2, 2))
    same = minibatch_std(torch.ones(4, 2, 2, 2), 4)[:, 2]
    assert same.max() < 1e-3  # identical images: no spread


def test_discriminator_config_is_checked():
    from epsvae.config import apply_overrides

    for key, value, match in [
        ("model.discriminator.head", "global", "must be 'pool', 'stylegan' or 'patch'"),
        ("model.discriminator.group_channels", -1, "at least 0"),
        ("model.discriminator.mbstd_group", 0, "at least 1"),
        ("train.loss.adv_weighting", "vqgan", "'fixed' or 'adaptive'"),
        ("train.loss.adv_ramp", -5, "at least 0"),
    ]:
        from epsvae.presets import run_config

        with pytest.raises(ConfigError, match=match):
            apply_overrides(run_config("eps-fmnist"), {key: value})
    with pytest.raises(ConfigError, match="needs a 4x4 feature map.*model.image_size >= 32"):
        apply_overrides(run_config("eps-fmnist"), {"model.discriminator.head": "stylegan", "model.image_size": 16})
    apply_overrides(run_config("eps-fmnist"), {"model.discriminator.head": "stylegan"})  # 32 px: 4x4, accepted
    with pytest.raises(ConfigError, match="train.resolution 16 with 3 discriminator levels.*resolution >= 32"):
        apply_overrides(run_config("eps-fmnist"), {"train.resolution": 16})  # the crops the discriminator sees
    apply_overrides(run_config("eps-fmnist"), {"train.resolution": 16, "model.discriminator.head": "pool"})
    with pytest.raises(ConfigError, match="unscaled fp16 gradients"):
        apply_overrides(
            run_config("eps-fmnist"), {"train.mixed_precision": "fp16", "train.loss.adv_weighting": "adaptive"}
        )


def test_pixel_dit_decoder(tmp_path):
    """The Transformer decoder: same interface as the U-Net, zero velocity at init (zero output),
    any size divisible by its patch, every parameter trained by the loss; tiling refused clearly."""
    from epsvae.config import apply_overrides
    from epsvae.nn.pixel_dit import PixelDiT

    cfg = apply_overrides(tiny_config(), {"decoder.arch": "dit", "decoder.dit_hidden": 16, "decoder.dit_depth": 2,
                                          "decoder.dit_heads": 2, "decoder.dit_patch": 2})  # fmt: skip
    model = EpsilonVAE(cfg)
    assert isinstance(model.decoder, PixelDiT) and model.last_layer is model.decoder.out.weight
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    z = model.encode(x)
    assert torch.equal(model.velocity(x, torch.rand(2), z), torch.zeros_like(x))  # zero-initialised output
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.05)
    out = model(x)
    v = model.velocity(x, torch.rand(2), z)
    assert out.v_pred.shape == x.shape and v.abs().sum() > 0
    (out.v_pred - out.v_target).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    big = torch.rand(1, 1, 24, 20) * 2 - 1  # another size: positions computed for it
    assert model.decode(model.encode(big), steps=2, generator=torch.Generator().manual_seed(0)).shape == big.shape
    # a patch's velocity depends on other patches (global attention), unlike a 1-token MLP
    x2 = x.clone()
    x2[:, :, :2, :2] += 1
    changed = (model.velocity(x2, torch.full((2,), 0.5), z) - model.velocity(x, torch.full((2,), 0.5), z)).abs()
    assert changed[:, :, 8:, 8:].sum() > 0
    with pytest.raises(ValueError, match="tiled decoding cuts the ADM U-Net"):
        model.decode(z, tile_size=8)
    with pytest.raises(ValueError, match="divisible by the decoder's patch size 2"):
        model.velocity(torch.rand(1, 1, 16, 15), torch.rand(1), z[:1])
    for bad, match in [
        ({"decoder.dit_heads": 3}, "divisible by dit_heads"),
        ({"decoder.arch": "vit"}, "'adm' or 'dit'"),
        ({"image_size": 15, "encoder.channel_mult": [1]}, "patch size 2"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_overrides(cfg, bad)
    with pytest.raises(ConfigError, match="VAE's decoder is convolutional"):
        apply_overrides(tiny_config("vae"), {"decoder.arch": "dit"})
    model.save_pretrained(tmp_path / "m")  # saved and loaded like any model
    again = load_pretrained(tmp_path / "m")
    assert isinstance(again.decoder, PixelDiT)
    torch.testing.assert_close(again.velocity(x, torch.full((2,), 0.5), z), model.velocity(x, torch.full((2,), 0.5), z))


def test_discriminator_blur_runs_in_fp32_under_cpu_autocast():
    """On the CPU the discriminator's depthwise blur opts out of a bf16 autocast (its backward is
    about 3x slower in bf16): same values as the fp32 blur of the same input, gradients reach a bf16
    input, the rest of the discriminator stays in bf16."""
    from epsvae.config import DiscriminatorConfig
    from epsvae.nn.discriminator import BlurDown, Discriminator

    blur = BlurDown()
    x = torch.randn(2, 3, 8, 8).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blur(x)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y, blur(x.detach().float()))
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0
    d = Discriminator(DiscriminatorConfig(channels=8, channel_mult=(1, 2)), 1)
    pair, t = torch.randn(4, 2, 16, 16), torch.rand(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = d(pair, t)
    assert logits.dtype == torch.bfloat16  # the head's linear layer runs under the autocast
    torch.testing.assert_close(logits.float(), d(pair, t), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("cls,kind", [(EpsilonVAE, "epsilon"), (BaselineVAE, "vae")])
@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_decoder_padding_mode(tmp_path, cls, kind, mode):
    """`decoder.padding_mode` pads every padded conv of the decoder (not the encoder's) that way: the
    same weights give the same image inside and another at the border; gradients reach every weight;
    the mode survives save/load; zero-padded weights load into it (the state dict is the same)."""
    zeros = cls(tiny_config(kind)).eval()
    for p in zeros.parameters():  # non-trivial weights everywhere, zero-init convs included
        torch.nn.init.normal_(p, std=0.2)
    cfg = tiny_config(kind)
    cfg.decoder.padding_mode = mode
    model = cls(cfg).eval()
    model.load_state_dict(zeros.state_dict())
    padded = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == mode for m in padded)
    assert all(m.padding_mode == "zeros" for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))

    z = torch.randn(2, 2, 8, 8)
    decode = (lambda m: m.decode(z, steps=1, generator=torch.Generator().manual_seed(3))) if kind == "epsilon" else (
        lambda m: m.decode(z))  # fmt: skip
    with torch.no_grad():
        a, b = decode(zeros), decode(model)
    assert a.shape == b.shape == (2, 1, 16, 16)
    diff = (a - b).abs()
    ring = torch.cat([diff[..., 0, :], diff[..., -1, :], diff[..., 1:-1, 0], diff[..., 1:-1, -1]], dim=-1)
    assert ring.mean() > 1e-3 and ring.mean() > 2 * diff[..., 6:10, 6:10].mean()

    model.train()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    zx = model.encode(x)
    out = model.velocity(torch.randn_like(x), torch.full((2,), 0.5), zx) if kind == "epsilon" else model.decode(zx)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())

    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.config.decoder.padding_mode == mode
    with torch.no_grad():
        assert torch.equal(decode(loaded), decode(model.eval()))


def test_decoder_padding_mode_is_checked():
    with pytest.raises(ConfigError, match="padding_mode must be one of zeros, reflect, replicate, got 'circular'"):
        DecoderConfig(padding_mode="circular")
    with pytest.raises(ConfigError, match="applies to the U-Net"):
        DecoderConfig(arch="dit", dit_hidden=16, dit_patch=2, padding_mode="reflect")
    cfg = tiny_config()
    cfg.decoder.padding_mode = "reflect"
    model = EpsilonVAE(cfg)  # f2 encoder, a 2-level U-Net: its smallest map is half the image
    with pytest.raises(ValueError, match="reflection, which needs latents of at least 2x2 .* got 1x3"):
        model.decode(torch.randn(1, 2, 1, 3), steps=1)
    cfg = tiny_config("vae")
    cfg.decoder.padding_mode = "reflect"
    with pytest.raises(ValueError, match="at least 2x2 .* got 4x1"):
        BaselineVAE(cfg).decode(torch.randn(1, 2, 4, 1))
