"""CUDA checks; skipped on machines without a GPU (CI), run on a GPU machine."""

import pytest
import torch

from epsvae import EpsilonVAE

from conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model():
    model = EpsilonVAE(tiny_config(channels=3))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_cuda_decode_matches_cpu_with_a_cpu_generator():
    model = _model()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    cpu = model.decode(model.encode(x), steps=3, generator=torch.Generator().manual_seed(0))
    gpu_model = model.cuda()
    gpu = gpu_model.decode(gpu_model.encode(x.cuda()), steps=3, generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_cuda_generator_reproducible_and_bf16_forward_finite():
    model = _model().cuda()
    z = model.encode(torch.rand(2, 3, 16, 16, device="cuda"))
    g = lambda: torch.Generator(device="cuda").manual_seed(5)  # noqa: E731
    assert torch.equal(model.decode(z, generator=g()), model.decode(z, generator=g()))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.train()(torch.rand(2, 3, 16, 16, device="cuda"))
    assert all(torch.isfinite(t).all() for t in (out.v_pred, out.x0_hat))


def test_save_from_cuda_load_on_cpu(tmp_path):
    model = _model().cuda()
    model.save_pretrained(tmp_path / "m")
    loaded = EpsilonVAE.from_pretrained(tmp_path / "m")
    assert all(
        torch.equal(a.cpu(), b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision_decode_and_tiling(dtype):
    """bf16 and fp16 models take fp32 latents, decode without NaN close to fp32, and tile exactly
    as they decode untiled up to their own rounding."""
    from epsvae.tiling import TileConfig

    model = _model().cuda()
    z = torch.randn(2, 2, 16, 16, device="cuda")  # fp32 latents, 32 x 32 px
    g = lambda: torch.Generator(device="cuda").manual_seed(5)  # noqa: E731
    ref = model.decode(z, steps=2, generator=g())
    low = model.to(dtype)
    out = low.decode(z, steps=2, generator=g())
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    tiled = low.decode(z, steps=2, generator=g(), tiling=TileConfig(size=16, max_global=8 * 8))
    assert torch.isfinite(tiled).all() and (tiled.float() - out.float()).abs().mean() < 0.05 * ref.abs().mean()
