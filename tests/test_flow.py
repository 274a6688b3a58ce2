import math

import pytest
import torch

from epsvae import flow


def test_reversed_log_grid_matches_paper():
    assert flow.grid_reversed_log(1).tolist() == [1.0, 0.0]
    assert [round(v, 4) for v in flow.grid_reversed_log(2).tolist()] == [1.0, 0.8516, 0.0]
    assert [round(v, 4) for v in flow.grid_reversed_log(3).tolist()] == [1.0, 0.9130, 0.7657, 0.0]


def test_reversed_log_grid_formula_and_monotone():
    ts = flow.grid_reversed_log(10)
    u = torch.arange(11, dtype=torch.float64) / 10
    assert torch.allclose(ts.double(), torch.log(100 - 99 * u) / math.log(100), atol=1e-6)
    assert (ts[1:] < ts[:-1]).all()


def test_uniform_grid():
    assert torch.allclose(flow.grid_uniform(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match="positive integer"):
        flow.grid_uniform(0)
    with pytest.raises(ValueError, match="unknown time grid"):
        flow.make_grid("cosine", 3)


def test_matched_grid_is_the_uniform_grid_moved_by_the_logit_shift():
    assert torch.equal(flow.grid_matched(4, 0.0), flow.grid_uniform(4))
    assert [round(v, 4) for v in flow.grid_matched(3, 0.8).tolist()] == [1.0, 0.8166, 0.5267, 0.0]
    for t_mean in (-1.0, 0.4, 1.2):
        ts = flow.grid_matched(5, t_mean)
        assert ts[0].item() == 1.0 and ts[-1].item() == 0.0 and (ts[1:] < ts[:-1]).all()
        u = flow.grid_uniform(5)[1:-1].double()
        assert torch.allclose(ts[1:-1].double(), torch.sigmoid(torch.logit(u) + t_mean), atol=1e-6)
    assert torch.equal(flow.make_grid("matched", 3, 0.8), flow.grid_matched(3, 0.8))
    assert torch.equal(flow.make_grid("uniform", 3, 0.8), flow.grid_uniform(3))  # t_mean moves 'matched' only
    with pytest.raises(ValueError, match="finite"):
        flow.grid_matched(3, float("nan"))


def test_matched_grid_follows_the_config_t_mean():
    from epsvae.config import FlowConfig
    from epsvae.decoding import resolve_grid

    assert torch.equal(resolve_grid(FlowConfig(t_mean=1.2), 3, "matched"), flow.grid_matched(3, 1.2))
    assert torch.equal(resolve_grid(FlowConfig(t_mean=1.2, grid="matched"), None, None), flow.grid_matched(3, 1.2))
    # the uniform sampler has no shift to match: its matched grid is the uniform one
    assert torch.equal(resolve_grid(FlowConfig(t_sampler="uniform", t_mean=1.2), 2, "matched"), flow.grid_uniform(2))


@pytest.mark.parametrize("gamma", [1.0, 0.8, 0.6, 0.4])
def test_x0_recovered_exactly_from_true_velocity(gamma):
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.rand(4)
    x_t = flow.interpolate(x0, eps, t, gamma)
    v = flow.velocity_target(x0, eps, gamma)
    assert torch.allclose(flow.x0_estimate(x_t, t, v, gamma), x0, atol=1e-5)


def test_interpolation_endpoints_and_velocity_is_derivative():
    x0, eps, gamma = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), 0.6
    assert torch.allclose(flow.interpolate(x0, eps, torch.zeros(2), gamma), gamma * x0)
    assert torch.allclose(flow.interpolate(x0, eps, torch.ones(2), gamma), eps)
    t, dt = torch.full((2,), 0.3), 1e-3
    finite = (flow.interpolate(x0, eps, t + dt, gamma) - flow.interpolate(x0, eps, t, gamma)) / dt
    assert torch.allclose(finite, flow.velocity_target(x0, eps, gamma), atol=1e-2)


def test_input_scale_gives_unit_variance():
    x0, eps = torch.randn(200_000), torch.randn(200_000)
    for tv in (0.0, 0.3, 0.9):
        t = torch.full((1,), tv)
        x_t = flow.interpolate(x0[None], eps[None], t, 0.6)
        assert abs((x_t * flow.input_scale(t, 0.6)).std().item() - 1) < 0.01


@pytest.mark.parametrize("sampler", [flow.sample_euler, flow.sample_heun])
@pytest.mark.parametrize("grid", [flow.grid_reversed_log(3), flow.grid_uniform(5), flow.grid_reversed_log(1)])
def test_samplers_land_exactly_on_straight_field(sampler, grid):
    # A straight-line field from every noise sample to its target: v = eps - target is constant.
    target, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    v = eps - target
    calls = []
    out = sampler(lambda x, t: (calls.append(t), v)[1], eps.clone(), grid)
    assert torch.allclose(out, target, atol=1e-5)
    assert calls and all(c.shape == (3,) for c in calls)


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t("logit-normal", 100_000, generator=g)
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.01
    # logit of a logit-normal sample is normal with the given mean and std
    logits = torch.log(t / (1 - t))
    assert abs(logits.std().item() - 1) < 0.02
    u = flow.sample_t("uniform", 100_000, generator=g)
    assert abs(u.mean().item() - 0.5) < 0.01
    shifted = flow.sample_t("logit-normal", 10_000, mean=1.0, generator=g)
    assert shifted.median() > 0.7
    with pytest.raises(ValueError, match="unknown time sampler"):
        flow.sample_t("beta", 3)


def test_time_mixtures_put_the_asked_mass_on_uniform_and_grid_points():
    n = 200_000
    base = flow.sample_t("logit-normal", n, generator=torch.Generator().manual_seed(1))
    same = flow.sample_t_mixed("logit-normal", n, generator=torch.Generator().manual_seed(1))
    assert torch.equal(base, same)  # no mixture: the same draws as before the option existed
    points = flow.grid_reversed_log(3)[:-1]  # 1, 0.913, 0.766
    g = torch.Generator().manual_seed(2)
    t = flow.sample_t_mixed("logit-normal", n, uniform_mix=0.2, grid_points=points, grid_mix=0.3, generator=g)
    on_grid = torch.isin(t, points)
    assert abs(on_grid.float().mean().item() - 0.3) < 0.005
    for p in points:  # uniformly over the grid's points
        assert abs((t == p).float().mean().item() - 0.1) < 0.004
    # off the grid, mass above 0.91: logit-normal alone puts 1.0% there (P(N(0,1) > logit 0.91)), U(0, 1) 9%
    p_ln = 0.5 * math.erfc(math.log(0.91 / 0.09) / math.sqrt(2))
    high = (t[~on_grid] > 0.91).float().mean().item() * 0.7
    assert abs(high - (0.5 * p_ln + 0.2 * 0.09)) < 0.001
    with pytest.raises(ValueError, match="sum <= 1"):
        flow.sample_t_mixed("uniform", 3, uniform_mix=0.6, grid_points=points, grid_mix=0.5)
    with pytest.raises(ValueError, match="grid's non-zero points"):
        flow.sample_t_mixed("uniform", 3, grid_mix=0.5)


def test_model_trains_on_its_grid_points_when_asked():
    from epsvae import ConfigError, EpsilonVAE
    from epsvae.config import apply_overrides

    from conftest import tiny_config

    cfg = apply_overrides(tiny_config(), {"flow.t_grid_mix": 1.0, "flow.grid": "uniform", "flow.steps": 4})
    t = EpsilonVAE(cfg).draw(1000, (16, 16), torch.Generator().manual_seed(0))["t"]
    assert set(t.unique().tolist()) == {1.0, 0.75, 0.5, 0.25}
    # the matched grid's points follow the training shift
    cfg = apply_overrides(cfg, {"flow.grid": "matched", "flow.t_mean": 0.8, "flow.steps": 3})
    model = EpsilonVAE(cfg)
    t = model.draw(1000, (16, 16), torch.Generator().manual_seed(0))["t"]
    assert set(t.unique().tolist()) == set(flow.grid_matched(3, 0.8)[:-1].tolist())
    z = torch.randn(2, cfg.encoder.latent_channels, 8, 8)
    with torch.no_grad():  # the decode takes it by name: the same grid as its times
        by_name = model.decode(z, grid="matched", generator=torch.Generator().manual_seed(3))
        by_times = model.decode(z, grid=flow.grid_matched(3, 0.8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(by_name, by_times)
    with pytest.raises(ConfigError, match="'matched', got 'cosine'"):
        apply_overrides(tiny_config(), {"flow.grid": "cosine"})
    with pytest.raises(ConfigError, match="at most 1"):
        apply_overrides(tiny_config(), {"flow.t_grid_mix": 0.7, "flow.t_uniform_mix": 0.5})


def test_x0_prediction_round_trips_and_clips_near_zero():
    x_t, d = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([1.0, 0.5, 0.05, 0.01])
    v = flow.output_to_velocity(d, x_t, t, gamma=0.6, prediction="x0", t_min=0.05)
    x0 = flow.x0_estimate(x_t, t, v, gamma=0.6)
    torch.testing.assert_close(x0[:3], d[:3])  # the network's output is the one-step estimate for t >= t_min
    torch.testing.assert_close(v[3], (x_t[3] - 0.6 * d[3]) / 0.05)  # below t_min, divided by t_min: finite
    assert flow.output_to_velocity(d, x_t, t, 0.6, "velocity") is d
    with pytest.raises(ValueError, match="unknown prediction"):
        flow.output_to_velocity(d, x_t, t, 0.6, "eps")


def test_x0_prediction_model_decodes_its_output_and_trains():
    from epsvae import ConfigError, EpsilonVAE
    from epsvae.config import apply_overrides

    from conftest import tiny_config

    torch.manual_seed(0)
    model = EpsilonVAE(apply_overrides(tiny_config(), {"flow.prediction": "x0", "flow.gamma": 0.6})).eval()
    x = torch.rand(2, model.config.image_channels, 16, 16) * 2 - 1
    z = model.encode(x)
    noise = torch.randn_like(x)
    # one Euler step from t = 1 lands on the network's output at t = 1: the image itself
    scale = flow.input_scale(torch.ones(2), 0.6).reshape(-1, 1, 1, 1)
    direct = model.decoder(noise * scale, torch.ones(2), z)
    torch.testing.assert_close(model.decode(z, steps=1, noise=noise), direct, rtol=1e-5, atol=1e-5)
    # the training forward's x0_hat is the network's output; the velocity loss reaches the decoder's output layer
    out = model(x, t=torch.tensor([0.9, 0.3]), noise=noise)
    d = model.decoder(out.x_t * flow.input_scale(out.t, 0.6).reshape(-1, 1, 1, 1), out.t, z)
    torch.testing.assert_close(out.x0_hat, d, rtol=1e-4, atol=1e-5)
    torch.nn.functional.mse_loss(out.v_pred, out.v_target).backward()
    assert model.decoder.output_layer.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="flow.prediction"):
        apply_overrides(tiny_config(), {"flow.prediction": "eps"})
