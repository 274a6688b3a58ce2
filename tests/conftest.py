import importlib
import os

import pytest
import torch

from epsvae.config import AutoencoderConfig, DecoderConfig, DiscriminatorConfig, EncoderConfig


def tiny_config(kind: str = "epsilon", channels: int = 1, size: int = 16, **flow) -> AutoencoderConfig:
    """A few-thousand-parameter model: 2 levels (f2), 2 latent channels."""
    from epsvae.config import FlowConfig

    return AutoencoderConfig(
        kind=kind,
        image_channels=channels,
        image_size=size,
        encoder=EncoderConfig(channels=4, channel_mult=(1, 2), num_res_blocks=1, extra_blocks=1, latent_channels=2),
        decoder=DecoderConfig(channels=4, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_channels=4),
        discriminator=DiscriminatorConfig(channels=4, channel_mult=(1, 2)),
        flow=FlowConfig(**flow),
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache (~/.cache/epsvae): a network trained on a
    test's stand-in data once leaked there and was then used by real runs."""
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path_factory.getbasetemp() / "epsvae-cache"))
    # the automatic feature networks train for minutes on real data; on the tests' stand-in
    # data two steps are enough (the private cache above keeps them out of real runs)
    monkeypatch.setenv("EPSVAE_FEATURE_STEPS", "2")


@pytest.fixture
def fmnist(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST in EPSVAE_DATA and a private cache (the feature network trains there)."""
    from helpers import write_fake_fashion_mnist

    root = write_fake_fashion_mnist(tmp_path / "fmnist")
    monkeypatch.setenv("EPSVAE_DATA", str(root))
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    return root


def need(module: str):
    """Import `module`: skipped where it is not installed, except in CI (CI=true), which installs it."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)
