"""`AutoencoderEps` as the `vae` of diffusers pipelines, built the way diffusers' own fast
tests build theirs: tiny, randomly initialised, from configs, offline."""

import json

import numpy as np
import pytest
import torch

from epsvae import EpsilonVAE, load_pretrained
from epsvae.config import AutoencoderConfig, DecoderConfig, EncoderConfig, to_dict

from conftest import need

diffusers = need("diffusers")
from epsvae.integrations.diffusers import AutoencoderEps, pooled_scaling  # noqa: E402


def tiny_eps(latent_channels: int = 4, stats: bool = True) -> EpsilonVAE:
    """f2, 4 latent channels (what the tiny pipelines' networks take), weights all nonzero."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(
        image_channels=3,
        image_size=16,
        encoder=EncoderConfig(channels=4, channel_mult=(1, 2), num_res_blocks=1, extra_blocks=1,
                              latent_channels=latent_channels, gaussian=True),
        decoder=DecoderConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_channels=4),
        latent_mean=(0.1, -0.2, 0.0, 0.3) if stats else None,
        latent_std=(1.5, 0.5, 1.0, 2.0) if stats else None,
    )  # fmt: skip
    model = EpsilonVAE(cfg).eval()
    for p in model.parameters():
        if p.dim() > 1 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.1)
    return model


def test_interface_and_decode_equals_epsilon_vae():
    eps = tiny_eps()
    vae = AutoencoderEps.from_epsvae(eps)
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    assert vae.config.latent_channels == 4 and 2 ** (len(vae.config.block_out_channels) - 1) == 2
    scale, shift = pooled_scaling([0.1, -0.2, 0.0, 0.3], [1.5, 0.5, 1.0, 2.0])
    assert vae.config.scaling_factor == pytest.approx(scale) and vae.config.shift_factor == pytest.approx(0.05)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    dist = vae.encode(x).latent_dist
    torch.testing.assert_close(dist.mode(), eps.encode(x))
    a = dist.sample(torch.Generator().manual_seed(0))
    b = dist.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, dist.mode())
    z = dist.mode()
    out = vae.decode(z, generator=torch.Generator().manual_seed(5), num_inference_steps=2)
    ref = eps.decode(z, steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out.sample, ref)
    (tup,) = vae.decode(z, return_dict=False, generator=torch.Generator().manual_seed(5), num_inference_steps=2)
    assert torch.equal(tup, ref)
    assert vae(x, generator=torch.Generator().manual_seed(1)).sample.shape == x.shape


def test_tiling_and_slicing_switches():
    vae = AutoencoderEps.from_epsvae(tiny_eps())
    z = torch.randn(2, 4, 16, 16)
    plain = vae.decode(z, generator=torch.Generator().manual_seed(0), num_inference_steps=1).sample
    vae.enable_tiling(tile_size=16, max_global=8 * 8)
    vae.enable_slicing()
    tiled = vae.decode(z, generator=torch.Generator().manual_seed(0), num_inference_steps=1).sample
    assert (tiled - plain).abs().max() < 1e-4  # attention only at the global level: exact
    vae.disable_tiling()
    vae.disable_slicing()
    assert torch.equal(vae.decode(z, generator=torch.Generator().manual_seed(0), num_inference_steps=1).sample, plain)


def test_diffusers_round_trip_is_bitwise(tmp_path):
    vae = AutoencoderEps.from_epsvae(tiny_eps())
    vae.save_pretrained(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["_class_name"] == "AutoencoderEps"
    back = AutoencoderEps.from_pretrained(tmp_path / "d")
    for (k, v), (k2, v2) in zip(vae.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert back.config.scaling_factor == vae.config.scaling_factor
    half = AutoencoderEps.from_pretrained(tmp_path / "d", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half.decode(torch.randn(1, 4, 8, 8), num_inference_steps=1).sample.dtype == torch.bfloat16
    # diffusers' format -> epsvae's format -> diffusers' format, weights unchanged
    back.to_epsvae().save_pretrained(tmp_path / "e")
    again = AutoencoderEps.from_epsvae(load_pretrained(tmp_path / "e"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in vae.state_dict().items())
    assert to_dict(again.to_epsvae().config) == to_dict(vae.to_epsvae().config)


def test_cli_export_both_ways(tmp_path):
    from epsvae.cli import main

    tiny_eps().save_pretrained(tmp_path / "eps")
    assert main(["export", str(tmp_path / "eps"), "--out", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    vae = AutoencoderEps.from_pretrained(tmp_path / "d")
    assert main(["export", str(tmp_path / "d"), "--out", str(tmp_path / "e")]) == 0
    model = load_pretrained(tmp_path / "e")
    for k, v in load_pretrained(tmp_path / "eps").state_dict().items():
        assert torch.equal(v, model.state_dict()[k]) and torch.equal(v, vae.to_epsvae().state_dict()[k])


def test_cli_export_a_run_as_diffusers(fmnist, tmp_path):
    """`epsvae export RUN --format diffusers`: the run's EMA weights, as `epsvae export RUN` writes them."""
    from epsvae.cli import main

    from helpers import TINY

    args = ["--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(tmp_path / "r"), *TINY, "--steps", "1"]
    assert main(["train", *args]) == 0
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "e")]) == 0
    vae, model = AutoencoderEps.from_pretrained(tmp_path / "d"), load_pretrained(tmp_path / "e")
    assert all(torch.equal(v, vae.to_epsvae().state_dict()[k]) for k, v in model.state_dict().items())


def test_dit_pipeline_end_to_end():
    from diffusers import DDIMScheduler, DiTPipeline, Transformer2DModel

    torch.manual_seed(0)
    transformer = Transformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", norm_elementwise_affine=False,
    )  # fmt: skip
    vae = AutoencoderEps.from_epsvae(tiny_eps())
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                  output_type="np").images  # fmt: skip
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


def _tiny_clip_tokenizer(directory):
    """A CLIP tokenizer with a character vocabulary, written to disk (diffusers' tests download one)."""
    transformers = need("transformers")
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                      model_max_length=77)  # fmt: skip


def test_text_to_image_pipeline_end_to_end(tmp_path):
    """StableDiffusionPipeline with a tiny CLIP text encoder and U-Net, as diffusers' fast tests build it."""
    transformers = need("transformers")
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )  # fmt: skip
    text_config = transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=AutoencoderEps.from_epsvae(tiny_eps()),
        text_encoder=transformers.CLIPTextModel(text_config).eval(),
        tokenizer=_tiny_clip_tokenizer(tmp_path),
        unet=unet.eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red fox", generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                  guidance_scale=2.0, output_type="np").images  # fmt: skip
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all() and images.std() > 0
