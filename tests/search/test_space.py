"""The joint space: every point is a valid subnet, and every hardware knob changes the cost."""

import random

import optuna
import pytest
from optkit.backends.pim.cost import pim_cost, transfer_cost
from optkit.backends.pim.ops import PimOp
from optkit.backends.pim.presets import resolve_preset

from optkit.errors import ConfigError
from optkit.search.space import Candidate, HardwareChoice, SearchSpace, hardware_preset
from tests.search.conftest import CONFIG


class _Random:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


def test_every_suggestion_is_a_valid_subnet():
    space = SearchSpace(CONFIG, resolve_preset("hbm-pim"))
    for seed in range(50):
        cand = space.suggest(_Random(seed))
        CONFIG.check_choice(cand.choice)  # raises on an invalid subnet
        assert cand.hardware.numerics in ("fp16", "bf16", "int8")  # hbm-pim is fp16: no fp32


def test_no_source_picked_reads_the_newest_one():
    space = SearchSpace(CONFIG, resolve_preset("hbm-pim"))
    cand = Candidate(space.suggest(_Random(0)).choice, HardwareChoice(numerics="fp16"))
    params = space.params_of(cand)
    for key in [k for k in params if "_src" in k]:
        params[key] = False
    got = space.suggest(optuna.trial.FixedTrial(params))
    assert [c.sources for c in got.choice] == [(1,), (2,)]


def test_params_round_trip_and_candidate_json():
    space = SearchSpace(CONFIG, resolve_preset("upmem"))
    cand = space.suggest(_Random(3))
    assert space.suggest(optuna.trial.FixedTrial(space.params_of(cand))) == cand
    assert Candidate.from_dict(cand.to_dict()) == cand
    with pytest.raises(ConfigError, match="malformed"):
        Candidate.from_dict({"choice": [["mlp"]], "hardware": {}})


def test_knobs_change_the_cost_model():
    base = resolve_preset("hbm-pim")
    gemm = PimOp(
        "n",
        "k",
        "linear",
        "gemm",
        flops=2 * 256 * 512 * 512,
        in_bytes=256 * 512 * 4,
        out_bytes=256 * 512 * 4,
        weight_bytes=512 * 512 * 4,
        batch=256,
    )
    cost = pim_cost(gemm, base).us
    assert pim_cost(gemm, hardware_preset(base, HardwareChoice(units_scale=2.0))).us < cost
    assert pim_cost(gemm, hardware_preset(base, HardwareChoice(clock_scale=0.5))).us > cost
    int8 = hardware_preset(base, HardwareChoice(numerics="int8"))
    assert int8.lanes == 2 * base.lanes  # a 256-bit unit: 16 fp16 or 32 int8 lanes
    assert pim_cost(gemm, int8).us < cost and pim_cost(gemm, int8).uj < pim_cost(gemm, base).uj
    assert transfer_cost(1 << 20, int8).us < transfer_cost(1 << 20, base).us
    assert hardware_preset(base, HardwareChoice()) == base  # the preset's own knobs change nothing
    upmem = hardware_preset(resolve_preset("upmem"), HardwareChoice(units_scale=2.0))
    assert upmem.units == 5120 and upmem.unit_capacity_mib == 32  # same capacity, more units


@pytest.mark.parametrize(
    "kwargs",
    [
        {"operators": ()},
        {"operators": ("conv",)},
        {"units_scales": ()},
        {"clock_scales": (0.0,)},
        {"numerics": ("fp8",)},
        {"placements": ("everywhere",)},
    ],
)
def test_an_empty_or_unknown_choice_is_an_error(kwargs):
    with pytest.raises(ConfigError):
        SearchSpace(CONFIG, resolve_preset("hbm-pim"), **kwargs)
