"""The TeaCache gate: the modulated-input node, the polynomial rescale, and a static schedule
that recomputes more where the input changes more."""

from __future__ import annotations

import pytest
import torch

from optkit.caching import (
    block_change_profile,
    cache_units,
    fit_rescale,
    modulated_input,
    profile_gate,
    rescaled_change,
    teacache_schedule,
)
from optkit.caching.teacache import Rescale
from optkit.errors import ConfigError

STEPS = 10


def test_the_indicator_is_the_first_blocks_adaln_modulated_input(tiny_denoiser_program):
    p = tiny_denoiser_program
    units = cache_units(p)
    name = modulated_input(p, units[0])
    node = next(n for n in p.graph.nodes if n.name == name)
    # norm(h) * (1 + scale) + shift: an add inside blocks.0 whose inputs are the scaled norm and the shift.
    assert node.target is torch.ops.aten.add.Tensor
    assert node.meta["nn_module_stack"] and "blocks.0" in str(list(node.meta["nn_module_stack"].values())[-1])
    assert tuple(node.meta["val"].shape) == (2, 16, 32)
    assert any(a.target is torch.ops.aten.mul.Tensor for a in node.all_input_nodes)


def test_fit_rescale_recovers_a_polynomial():
    x = [0.01 * i for i in range(1, 30)]
    y = [0.02 + 0.5 * v + 3.0 * v * v for v in x]
    rescale = fit_rescale(x, y)
    assert rescale.coefficients == pytest.approx((0.02, 0.5, 3.0), abs=1e-6)
    assert rescale.r2 == pytest.approx(1.0)
    assert Rescale((-1.0, 0.0), 0.0)(0.3) == 0.0  # a change is never negative
    with pytest.raises(ConfigError, match="pairs"):
        fit_rescale([0.1, 0.2], [0.1, 0.2])


def test_the_schedule_recomputes_more_where_the_input_changes_more():
    # Two lanes whose indicator moves fast in the first half of sampling and slowly after it.
    fast, slow = [0.0] + [0.3] * 9, [0.0] + [0.05] * 9
    lanes = [fast[:5] + slow[5:], [v * 1.1 for v in fast[:5] + slow[5:]]]
    gate = rescaled_change(lanes, Rescale((0.0, 1.0), 1.0))
    schedule = teacache_schedule(["a", "b"], gate, 0.2)
    flags = schedule.recompute["a"]
    assert schedule.recompute["b"] == flags  # every block follows the one gate
    assert sum(flags[1:5]) > sum(flags[5:])
    assert sum(flags[1:5]) == 4 and sum(flags[5:]) == 1  # 0.3 per step vs 0.05 per step against 0.2
    with pytest.raises(ConfigError, match="threshold"):
        teacache_schedule(["a"], gate, -1.0)


def test_the_profile_records_the_indicator_and_the_output_change(tiny_denoiser_program, sample_fn):
    p = tiny_denoiser_program
    units = cache_units(p)
    probe = modulated_input(p, units[0])
    profile = block_change_profile(
        p, units, sampler="ddim", steps=STEPS, seeds=[0], probes=[probe], sample_fn=sample_fn
    )
    (lanes,) = profile.probe_change.values()
    assert len(lanes) == len(profile.output_change) == 1  # one seed, no guidance: one lane
    assert lanes[0][0] == 0.0 and all(v > 0 for v in lanes[0][1:])
    assert len(profile.timesteps) == STEPS and profile.timesteps == sorted(profile.timesteps, reverse=True)
    rescale, gate = profile_gate(profile)
    assert len(gate) == STEPS and gate[0] == 0.0 and all(g >= 0 for g in gate)
    assert len(rescale.coefficients) == 3
    plain = block_change_profile(p, units, sampler="ddim", steps=STEPS, seeds=[0], sample_fn=sample_fn)
    with pytest.raises(ConfigError, match="probe"):
        profile_gate(plain)
