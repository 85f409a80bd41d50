"""Scoring: inherited-weight AUC and the placed PIM cost of one candidate."""

import dataclasses

import pytest
import torch

from optkit.nn.supernet import BlockChoice
from optkit.search.scoring import inherited_scores
from optkit.search.space import Candidate, HardwareChoice

CHOICE = (BlockChoice("mlp", 8, (0, 1)), BlockChoice("dot", 4, (1, 2)))


def test_inherited_scores_match_the_supernet_forward(tiny_supernet, tiny_problem):
    import torch

    from optkit.metrics import roc_auc

    val = tiny_problem.splits["validation"]
    (row,) = inherited_scores(tiny_supernet, [CHOICE], val)
    with torch.no_grad():
        probs = torch.sigmoid(tiny_supernet(val["dense"], val["sparse"], CHOICE))
    assert row["auc"] == pytest.approx(roc_auc(val["labels"], probs), abs=1e-6)
    assert row["name"] == "mlp8<0,1> | dot4<1,2>"


def test_score_prices_the_placed_graph(scorer):
    optimal = scorer.score(Candidate(CHOICE, HardwareChoice(placement="optimal")))
    host = scorer.score(Candidate(CHOICE, HardwareChoice(placement="host")))
    assert 0.0 < optimal["auc"] < 1.0
    assert host["pim_ops"] == 0 and host["pim_bytes"] == 0
    assert optimal["latency_us"] <= host["latency_us"]  # min-cut never loses to host-only
    assert host["auc"] == optimal["auc"] or optimal["pim_ops"] > 0


def test_int8_weights_on_pim_are_rounded_and_fp32_ones_are_not(scorer):
    fp32 = scorer.score(Candidate(CHOICE, HardwareChoice(numerics="fp32", placement="greedy")))
    int8 = scorer.score(Candidate(CHOICE, HardwareChoice(numerics="int8", placement="greedy")))
    host = scorer.score(Candidate(CHOICE, HardwareChoice(placement="host")))
    assert fp32["auc"] == host["auc"]  # fp32 on the device is the host's numerics
    assert int8["pim_ops"] > 0
    assert int8["auc"] == pytest.approx(fp32["auc"], abs=0.05)
    keys = ["embedding.table:embedding:0"]
    plain = scorer.device_subnet(CHOICE, keys, "fp32").embedding.table.weight
    rounded = scorer.device_subnet(CHOICE, keys, "int8").embedding.table.weight
    assert not torch.equal(plain, rounded)
    step = plain.abs().amax(dim=1, keepdim=True) / 127  # per-row int8 scale
    assert ((plain - rounded).abs() <= step / 2 + 1e-7).all()
    untouched = scorer.device_subnet(CHOICE, keys, "int8").stem.weight
    assert torch.equal(untouched, scorer.supernet.stem.weight)


def test_more_units_and_a_faster_clock_cost_less(scorer):
    base = scorer.score(Candidate(CHOICE, HardwareChoice(placement="greedy")))
    big = scorer.score(
        Candidate(CHOICE, HardwareChoice(units_scale=2.0, clock_scale=1.5, placement="greedy"))
    )
    assert big["latency_us"] < base["latency_us"]
    assert big["preset"] != base["preset"] == "hbm-pim"


def test_scorer_pickles_without_its_graph_cache(scorer):
    import pickle

    scorer.score(Candidate(CHOICE, HardwareChoice()))
    assert scorer._graphs
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._graphs == {}
    assert dataclasses.replace(clone).preset == scorer.preset
