import pytest
import torch

from optkit.errors import ConfigError
from optkit.sampling import alphas_cumprod, sample, timesteps

MU, STD = 1.5, 0.5  # data distribution N(MU, STD^2) per dimension


def eps_oracle(x, t, *cond):
    """Exact E[eps | x_t] for Gaussian data: the optimal eps-prediction denoiser."""
    a = alphas_cumprod()[t.long()].float().reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)


def flow_oracle(x, t, *cond):
    """Exact E[noise - x0 | x_s] for Gaussian data under x_s = (1-s) x0 + s noise."""
    s = (t / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
    var = (1 - s) ** 2 * STD**2 + s**2
    centred = x - (1 - s) * MU
    e_noise = s * centred / var
    e_x0 = MU + (1 - s) * STD**2 * centred / var
    return e_noise - e_x0


@pytest.mark.parametrize(
    "sampler, denoiser, steps",
    [("ddim", eps_oracle, 50), ("dpm++2m", eps_oracle, 20), ("flow-euler", flow_oracle, 100)],
)
def test_samplers_reach_the_data_distribution(sampler, denoiser, steps):
    x = sample(denoiser, (4000, 2), sampler=sampler, steps=steps, seed=0)
    assert abs(x.mean().item() - MU) < 0.05
    assert abs(x.std().item() - STD) < 0.05


def test_dpm_solver_converges_in_fewer_steps_than_ddim():
    ref = sample(eps_oracle, (2000, 1), sampler="ddim", steps=500, seed=1)
    err_ddim = (sample(eps_oracle, (2000, 1), sampler="ddim", steps=10, seed=1) - ref).abs().mean()
    err_dpm = (sample(eps_oracle, (2000, 1), sampler="dpm++2m", steps=10, seed=1) - ref).abs().mean()
    assert err_dpm < err_ddim


def test_seed_observer_and_guidance():
    calls = []

    def observe(i, t, inputs, out):
        calls.append((i, inputs[0].shape[0], float(t[0])))

    cond, uncond = (torch.ones(3, 1),), (torch.zeros(3, 1),)

    def denoiser(x, t, c):
        return eps_oracle(x, t) + 0.1 * c

    a = sample(
        denoiser,
        (3, 2),
        sampler="ddim",
        steps=5,
        seed=7,
        cond=cond,
        uncond=uncond,
        guidance_scale=3.0,
        observer=observe,
    )
    b = sample(
        denoiser, (3, 2), sampler="ddim", steps=5, seed=7, cond=cond, uncond=uncond, guidance_scale=3.0
    )
    assert torch.equal(a, b)
    assert [c[0] for c in calls] == list(range(5)) and all(c[1] == 6 for c in calls)  # cond + uncond batched
    assert calls[0][2] == timesteps("ddim", 5)[0] == 999.0
    no_guidance = sample(denoiser, (3, 2), sampler="ddim", steps=5, seed=7, cond=cond)
    scale_one = sample(
        denoiser, (3, 2), sampler="ddim", steps=5, seed=7, cond=cond, uncond=uncond, guidance_scale=1.0
    )
    assert torch.allclose(no_guidance, scale_one)
    assert not torch.allclose(a, no_guidance)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown sampler 'euler'"):
        sample(eps_oracle, (1, 1), sampler="euler", steps=5, seed=0)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        timesteps("ddim", 0)
