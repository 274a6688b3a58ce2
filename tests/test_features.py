"""Feature networks: the label-free objectives, the independent network, and the standard-weights paths.

The standard weights (VGG16 for LPIPS, the FID Inception) cannot be downloaded here, so the
tests write weight files with random weights and check that `lpips-vgg:PATH` and
`inception:PATH` compute what the lpips and pytorch-fid packages compute with those files.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from epsvae.evaluate import INCEPTION_FILE, feature_extractor, feature_extractors, feature_network_path
from epsvae.features import (
    FEATURE_THREADS,
    FeatureNet,
    augment_views,
    auto_network,
    nt_xent,
    rotation_batch,
    train_feature_net,
)
from epsvae.perceptual import PerceptualError, build_perceptual

from conftest import need


def test_rotation_batch_labels_are_the_rotations():
    x = torch.arange(2 * 3 * 3, dtype=torch.float).reshape(2, 1, 3, 3)
    xr, k = rotation_batch(x, torch.Generator().manual_seed(0))
    for img, rot, turned in zip(x, k, xr, strict=True):
        assert torch.equal(torch.rot90(img, int(rot), dims=(1, 2)), turned)


def test_nt_xent_rewards_matching_views_and_views_stay_in_range():
    z = torch.eye(4)[:, :4] * 3
    matched = nt_xent(torch.cat([z, z]))
    shuffled = nt_xent(torch.cat([z, z[[1, 2, 3, 0]]]))
    assert matched < 0.1 < shuffled
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    v1, v2 = augment_views(x, g), augment_views(x, g)
    assert v1.shape == x.shape and v1.min() >= -1 and v1.max() <= 1 and not torch.equal(v1, v2)


def test_contrastive_network_trains_and_loads(fmnist, tmp_path, monkeypatch):
    monkeypatch.delenv("EPSVAE_FEATURE_STEPS")  # the real budget: one epoch, at least `min_images`
    metrics = train_feature_net("fashion-mnist", tmp_path / "c", "contrastive", epochs=1, batch_size=16,
                                widths=(4, 8), min_images=64)  # fmt: skip
    assert metrics["objective"] == "contrastive" and metrics["train_steps"] == 4
    net = FeatureNet.load(tmp_path / "c")
    assert net.config["head"] == "mlp" and net.embed(torch.zeros(2, 1, 32, 32)).shape == (2, 8)


def test_network_is_the_same_whatever_the_callers_thread_count(fmnist, tmp_path):
    # a float reduction's result depends on how many threads split it: without FEATURE_THREADS
    # the same seed trained in a 1-thread and a 2-thread process gives two networks (and two
    # fd_indep scales); the caller's own setting comes back afterwards
    before, digests = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            m = train_feature_net("fashion-mnist", tmp_path / f"t{threads}", "contrastive", epochs=1, batch_size=16,
                                  widths=(4, 8), min_images=64, device="cpu")  # fmt: skip
            assert torch.get_num_threads() == threads and m["threads"] == FEATURE_THREADS
            digests.append(FeatureNet.load(tmp_path / f"t{threads}").digest())
            assert m["digest"] == digests[-1]
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]
    other = FeatureNet.load(tmp_path / "t1")
    with torch.no_grad():
        other.head[0].weight[0, 0] += 1e-6  # any change to the weights is another network
    assert other.digest() != digests[0]


def test_shipped_networks_are_the_roles_networks_with_the_weights_they_record():
    from epsvae import features

    names = sorted(d.name for d in features.SHIPPED_DIR.iterdir() if d.is_dir())
    assert names == ["indep-d7c12f1ec9", "indep2-d7c12f1ec9", "perceptual-d7c12f1ec9"]  # Fashion-MNIST, 32 px
    for name in names:
        role, _ = name.split("-")
        cfg = json.loads((features.SHIPPED_DIR / name / "config.json").read_text())
        net = FeatureNet.load(features.SHIPPED_DIR / name)
        assert net.digest() == cfg["metrics"]["digest"] and tuple(cfg["widths"]) == features.ROLES[role][1]
        assert net.embed(torch.zeros(2, 1, 32, 32)).shape == (2, cfg["widths"][-1])
        assert features.shipped_network(role, "d7c12f1ec9") == features.SHIPPED_DIR / name


def test_auto_network_uses_a_shipped_network_ahead_of_training_and_the_cache(fmnist, tmp_path, monkeypatch):
    from epsvae import features

    fingerprint = features.dataset_fingerprint("fashion-mnist", 32, 1)
    ship, own = tmp_path / "ship" / f"indep-{fingerprint}", tmp_path / "own"
    for out, seed in ((ship, 0), (own, 1)):
        train_feature_net("fashion-mnist", out, "contrastive", epochs=1, batch_size=16, widths=(4, 8), min_images=64,
                          device="cpu", seed=seed)  # fmt: skip
    shipped_digest = FeatureNet.load(ship).digest()
    monkeypatch.setattr(features, "SHIPPED_DIR", ship.parent)
    # a network this machine trained and cached before (an older epsvae): the shipped one wins
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    shutil.copytree(own, features.auto_network_dir("indep", "fashion-mnist", 32, 1))

    def no_training(*a, **k):
        raise AssertionError("trained")

    monkeypatch.setattr(features, "train_feature_net", no_training)
    assert auto_network("indep", "fashion-mnist", 32, 1) == ship
    assert feature_network_path("indep", "fashion-mnist", 32, 1) == str(ship)
    assert feature_extractors("indep", "fashion-mnist", 32, 1)["fd_indep"].network.endswith(shipped_digest)
    # no shipped network for this role: trained here
    with pytest.raises(AssertionError, match="trained"):
        auto_network("indep2", "fashion-mnist", 32, 1)
    # the user's own networks on request: the cached one
    monkeypatch.setenv(features.TRAIN_OWN_ENV, "1")
    assert FeatureNet.load(auto_network("indep", "fashion-mnist", 32, 1)).digest() == FeatureNet.load(own).digest()
    monkeypatch.delenv(features.TRAIN_OWN_ENV)
    # damaged weights are refused with a clear message, never measured with
    data = bytearray((ship / "model.safetensors").read_bytes())
    data[-1] ^= 0x40
    (ship / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PerceptualError, match=f"damaged: its weights digest .* recorded {shipped_digest}"):
        auto_network("indep", "fashion-mnist", 32, 1)
    (ship / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PerceptualError, match="cannot be read"):
        auto_network("indep", "fashion-mnist", 32, 1)


def test_auto_network_is_trained_once_when_processes_start_together(fmnist, tmp_path, monkeypatch, capsys):
    import threading
    import time

    from epsvae import features

    monkeypatch.setattr(features, "SHIPPED_DIR", tmp_path / "none")
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    path = features.auto_network_dir("indep2", "fashion-mnist", 32, 1)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half-written")  # an interrupted fill: no config.json
    (path.parent / f".{path.name}.999999.tmp").mkdir()  # the private directory of a process that died
    calls = []

    def small(data_spec, out, objective, *a, **k):
        calls.append(Path(out))
        assert not (path / "config.json").exists()  # trained aside, moved into place whole
        time.sleep(0.5)  # the other caller arrives while this one trains
        return train_feature_net(data_spec, out, objective, epochs=1, batch_size=16, widths=(4, 8), min_images=64,
                                 device="cpu", seed=0, resolution=32, channels=1)  # fmt: skip

    monkeypatch.setattr(features, "train_feature_net", small)
    got = []
    threads = [threading.Thread(target=lambda: got.append(auto_network("indep2", "fashion-mnist", 32, 1)))
               for _ in range(2)]  # fmt: skip
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert got == [path, path] and len(calls) == 1 and calls[0] != path
    assert "waiting for another process" in capsys.readouterr().out
    assert FeatureNet.load(path).digest() == json.loads((path / "config.json").read_text())["metrics"]["digest"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_independent_network_differs_from_the_perceptual_one(fmnist):
    indep, perc = auto_network("indep", "fashion-mnist", 32, 1), auto_network("perceptual", "fashion-mnist", 32, 1)
    a, b = (json.loads((p / "config.json").read_text()) for p in (indep, perc))
    assert a["objective"] == "contrastive" and b["objective"] == "classes" and a["widths"] != b["widths"]
    names = feature_extractors("indep,features:auto", "fashion-mnist", 32, 1)
    assert list(names) == ["fd_indep", "fd_domain"]
    # the second independent network: the same recipe, another seed, so another instance
    two = feature_extractors("indep,indep2", "fashion-mnist", 32, 1)
    indep2 = auto_network("indep2", "fashion-mnist", 32, 1)
    assert json.loads((indep2 / "config.json").read_text())["widths"] == a["widths"]
    assert two["fd_indep"].network != two["fd_indep2"].network and two["fd_indep2"].network.startswith(indep2.name)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert two["fd_indep2"](x).shape == two["fd_indep"](x).shape == (3, 128)
    with pytest.raises(PerceptualError, match="two fd_indep"):
        feature_extractors("indep,indep", "fashion-mnist", 32, 1)
    # ":auto" names the spec's own automatic network, never another role's
    for spec, role in (("indep:auto", "indep"), ("indep2:auto", "indep2"), ("features:auto", "perceptual")):
        assert feature_network_path(spec, "fashion-mnist", 32, 1) == str(auto_network(role, "fashion-mnist", 32, 1))


def test_lpips_vgg_path_equals_the_lpips_package_with_those_weights(tmp_path):
    lpips = need("lpips")
    tv = need("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save(tv.models.vgg16().state_dict(), path)  # random weights, the standard file layout
    ours = build_perceptual(f"lpips-vgg:{path}")
    # the reference: lpips's own VGG LPIPS (its learned linear layers from the package), its
    # VGG16 slices loaded layer by layer from torchvision's VGG16 with the file's weights
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    vgg = tv.models.vgg16()
    vgg.load_state_dict(torch.load(path, weights_only=True))
    for k in range(1, 6):
        for name, layer in getattr(ref.net, f"slice{k}").named_children():
            layer.load_state_dict(vgg.features[int(name)].state_dict())
    x, y = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        expected = ref(x, y).flatten()
        torch.testing.assert_close(ours(x, y), expected, rtol=1e-5, atol=1e-6)
        assert (expected > 0).all() and torch.allclose(ours(x, x), torch.zeros(2), atol=1e-6)


def _random_fid_inception():
    """The FID Inception's architecture (pytorch-fid's fid_inception_v3, without its download), random weights."""
    fid = need("pytorch_fid.inception")
    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    for m in net.modules():  # non-trivial batch-norm statistics, so a wrong load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return fid, net


def test_inception_path_equals_pytorch_fid_with_those_weights(tmp_path):
    fid, net = _random_fid_inception()
    path = tmp_path / "fid_weights.pth"
    torch.save(net.state_dict(), path)
    name, extract = feature_extractor(f"inception:{path}", "fashion-mnist")
    # the reference: pytorch-fid's InceptionV3, finding the file in the torch hub cache under its name
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(path, hub / "checkpoints" / INCEPTION_FILE)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        ref = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        torch.hub.set_dir(old)
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        ours, theirs = extract(x), ref((x + 1) / 2)[0].flatten(1)
    assert name == "rfid_inception" and ours.shape == (2, 2048)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert extract(x[:1].mean(1, keepdim=True)).shape == (1, 2048)  # grayscale is repeated to RGB
