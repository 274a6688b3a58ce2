"""Tiled decoding, batch slicing, gradients through decoding and low-precision decoding.

Tiling proves itself against the plain path (STYLE.md 14): where it can be exact (no
attention at the levels it cuts) it must equal untiled decoding to 1e-4."""

import pytest
import torch

from epsvae import EpsilonVAE
from epsvae.config import AutoencoderConfig, DecoderConfig, EncoderConfig
from epsvae.tiling import TileConfig, ramp, receptive_margin, spans, split_level, windowed_levels


def tiny_tiling_model(attn_levels=(2,), dtype=torch.float32, updown: bool = True, padding: str = "zeros") -> EpsilonVAE:
    """3-level U-Net (f4) on an f2 encoder, every zero-initialised weight made random so that
    each block (and each GroupNorm's statistics) changes the output."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(
        image_channels=3,
        image_size=16,
        encoder=EncoderConfig(channels=4, channel_mult=(1, 2), num_res_blocks=1, extra_blocks=1, latent_channels=2),
        decoder=DecoderConfig(channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_levels=attn_levels,
                              head_channels=4, resblock_updown=updown, padding_mode=padding),
    )  # fmt: skip
    model = EpsilonVAE(cfg).eval()
    for p in model.parameters():
        if p.dim() > 1 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.2)
    return model.to(dtype)


def _seed(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_spans_cover_and_ramps_partition_unity():
    rows = spans(40, 16, 8)
    assert [r[2:] for r in rows] == [(0, 16), (16, 32), (32, 40)]
    assert rows[1][:2] == (8, 40) and rows[0][0] == 0 and rows[-1][1] == 40
    for blend in (0, 4, 8):
        total = torch.zeros(40, dtype=torch.float64)
        for r in rows:
            total[r[0] : r[1]] += ramp(r, 40, blend)
        torch.testing.assert_close(total, torch.ones(40, dtype=torch.float64))


def test_receptive_margin_and_split_level():
    unet = tiny_tiling_model().decoder
    # S=1: l0_conv (1) + l0 block (2) + l1_down (2 convs at level 1: 4) = 7 for phase A; phase C:
    # l1_up convs at level 0 (2), then with the l0 skip (3) two blocks (2 + 2) and the head conv (1) = 8
    assert receptive_margin(unet, 1) == 8
    assert split_level(unet, 64, 64, 32 * 32) == 1 and split_level(unet, 64, 64, 16 * 16) == 2
    assert windowed_levels(unet, 2) == [] and windowed_levels(tiny_tiling_model((0,)).decoder, 1) == [0]


@pytest.mark.parametrize("size,updown,padding", [(8, True, "zeros"), (16, True, "zeros"), (8, False, "zeros"),
                                                (8, True, "reflect"), (8, False, "replicate")])  # fmt: skip
def test_tiled_decode_equals_untiled(size, updown, padding):
    """No attention at the tiled levels: tiled == untiled to 1e-4 (max abs, fp32), with the same noise
    (ADM's resampling residual blocks, and plain pooling / upsampling between levels), whichever way
    the convs pad the image border (a tile's crop edge inside the image falls in its discarded margin)."""
    model = tiny_tiling_model(attn_levels=(2,), updown=updown, padding=padding)
    z = torch.randn(2, 2, 12, 20)  # 24 x 40 px: uneven tiles at the right and bottom borders
    plain = model.decode(z, steps=2, generator=_seed())
    tiled = model.decode(z, steps=2, generator=_seed(), tiling=TileConfig(size=size, max_global=12 * 20))
    assert plain.abs().max() > 1  # the check below is not trivially met by a near-zero output
    assert (tiled - plain).abs().max() < 1e-4
    # more overlap than the margin: seams are blended, still the same image
    blended = model.decode(z, steps=1, generator=_seed(), tiling=TileConfig(size=8, overlap=16, max_global=12 * 20))
    assert (blended - model.decode(z, steps=1, generator=_seed())).abs().max() < 1e-4


def test_lean_host_heap_around_tiled_calls(monkeypatch):
    """On the CPU a tiled call runs with glibc's mmap/trim thresholds lowered (Linux) and leaves them
    at glibc's defaults; the output is bitwise the same with and without; a user's own MALLOC_*
    setting is left alone."""
    import sys

    import epsvae.tiling as tiling_module

    assert tiling_module.release_host_memory() == sys.platform.startswith("linux")
    used, lean, trims = [], tiling_module.lean_host_heap, []
    monkeypatch.setattr(tiling_module, "lean_host_heap", lambda enabled: used.append(enabled) or lean(enabled))
    monkeypatch.setattr(tiling_module, "release_host_memory", lambda: trims.append(1) or True)
    unet = tiny_tiling_model().decoder
    x_t, t, z = torch.randn(1, 3, 24, 40), torch.full((1,), 0.5), torch.randn(1, 2, 12, 20)
    state = tiling_module.NormState()
    with torch.no_grad():
        trimmed = tiling_module.tiled_unet(unet, x_t, t, z, TileConfig(size=8, max_global=12 * 20), state)
        assert len(trims) == 3 * 5 * state.passes  # after every tile (3 x 5 of 8 px) of every pass
        kept = tiling_module.tiled_unet(unet, x_t, t, z, TileConfig(size=8, max_global=12 * 20, trim_host=False))
    assert used == [True, False] and len(trims) == 3 * 5 * state.passes and torch.equal(trimmed, kept)
    if sys.platform.startswith("linux"):
        calls = []
        libc = tiling_module._libc()
        monkeypatch.setattr(tiling_module, "_LIBC", type("L", (), {
            "mallopt": lambda self, k, v: calls.append((k, v)), "malloc_trim": lambda self, n: calls.append("trim"),
        })())  # fmt: skip
        with lean(True):
            assert calls == [(-3, 1 << 20), (-1, 1 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        assert calls[2:] == [(-3, 128 * 1024), (-1, 128 * 1024), "trim"]
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
        with lean(True):
            pass
        assert len(calls) == 5 and libc


def test_tile_size_shorthand_and_checks():
    model = tiny_tiling_model()
    z = torch.randn(1, 2, 8, 8)
    plain = model.decode(z, steps=1, generator=_seed())
    assert torch.equal(model.decode(z, steps=1, generator=_seed(), tile_size=16), plain)  # one tile: untiled
    with pytest.raises(ValueError, match="receptive margin"):
        model.decode(z, steps=1, tiling=TileConfig(size=8, overlap=4, max_global=4 * 4))
    with pytest.raises(ValueError, match="multiples of"):
        model.decode(z, steps=1, tiling=TileConfig(size=6, max_global=4 * 4))


def test_windowed_attention_is_approximate_but_close():
    """Attention at a tiled level sees only the tile's crop: not exact, documented, still bounded."""
    model = tiny_tiling_model(attn_levels=(0,))
    z = torch.randn(1, 2, 12, 12)
    plain = model.decode(z, steps=1, generator=_seed())
    tiled = model.decode(z, steps=1, generator=_seed(), tiling=TileConfig(size=8, max_global=12 * 12))
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    assert 0 < (tiled - plain).abs().max()


def test_batch_slicing_equals_whole_batch():
    model = tiny_tiling_model()
    z = torch.randn(3, 2, 8, 8)
    whole = model.decode(z, steps=2, generator=_seed())
    sliced = model.decode(z, steps=2, generator=_seed(), batch_size=1)
    assert (sliced - whole).abs().max() < 1e-4  # same noise per image; kernels differ only in rounding


def test_decode_gradients_match_finite_differences():
    model = tiny_tiling_model().double()
    z = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert not model.decode(z.detach(), steps=2, noise=noise).requires_grad  # no graph unless asked
    out = model.decode(z, steps=2, noise=noise, grad=True)
    assert out.requires_grad
    out.square().sum().backward()
    assert z.grad.abs().sum() > 0
    fn = lambda zz: model.decode(zz, steps=2, noise=noise, grad=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z.detach().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_tiled_decode_gradients_equal_untiled():
    """Gradients flow through the tiles and through the global GroupNorm statistics."""
    model = tiny_tiling_model()
    noise = torch.randn(1, 3, 24, 24)
    grads = []
    for tiling in (None, TileConfig(size=8, max_global=12 * 12)):
        z = torch.randn(1, 2, 12, 12, generator=_seed(0)).requires_grad_()
        model.decode(z, steps=1, noise=noise, grad=True, tiling=tiling).square().sum().backward()
        grads.append(z.grad)
    assert (grads[0] - grads[1]).abs().max() < 1e-4 * grads[0].abs().max()


def test_latents_cast_to_model_dtype_bf16():
    model = tiny_tiling_model(dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    z = torch.randn(1, 2, 8, 8)  # float32 latents for a bf16 model
    ref = tiny_tiling_model().decode(z, steps=2, generator=_seed())
    out = model.decode(z, steps=2, generator=_seed())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert model.encode(torch.rand(1, 3, 16, 16)).dtype == torch.bfloat16


def test_fp16_decodes_without_nan_or_refuses_clearly():
    model = tiny_tiling_model(dtype=torch.float16)
    z = torch.randn(1, 2, 8, 8)
    ref = tiny_tiling_model().decode(z, steps=2, generator=_seed())
    out = model.decode(z, steps=2, generator=_seed())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.02 * ref.abs().mean()
    with torch.no_grad():
        model.decoder.out_conv.weight.mul_(1e5)  # drive the velocity past fp16's range
    with pytest.raises(RuntimeError, match="overflowed in float16"):
        model.decode(z, steps=2, generator=_seed())
