"""The `pim` pass: placement annotations and figures; the graph and its outputs unchanged."""

import logging

import pytest
import torch
from optkit.backends.pim.presets import resolve_preset
from optkit.backends.pim.simulate import placement_of, run_partitioned
from optkit.passes.pim import PimConfig, PimPartition

from optkit.errors import ConfigError, UnknownNameError
from optkit.metrics import sqnr_db


def ops_of(program):
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("placement", ["optimal", "greedy"])
def test_pass_annotates_without_changing_the_graph(recommender_program, pim_host_model, placement):
    before, reference = ops_of(recommender_program), recommender_program.run()
    result = PimPartition(PimConfig(preset="upmem", placement=placement)).run(recommender_program.clone())
    program = result.program
    assert ops_of(program) == before  # structural: nothing rewritten
    assert torch.equal(program.run(), reference)
    part = program.annotations.partition
    assert part and set(part.values()) <= {0, 1}
    assert all(":" in key for key in part)  # stable module:op:k keys
    fig = result.figures
    assert fig["latency_pim"].value <= fig["latency_host_only"].value * (
        1.0 if placement == "optimal" else 10
    )
    assert program.annotations.figures["pim"]["preset"] == "upmem"
    if placement == "greedy":  # the embedding bag goes to PIM, computed there in int8
        assert fig["pim_ops"].value >= 1
        assert 20 < fig["device_output_sqnr"].value < float("inf")


def test_optimal_is_never_worse_than_greedy_or_host(recommender_program, pim_host_model):
    for preset in ("hbm-pim", "aim", "upmem", "recnmp"):
        fig = PimPartition(PimConfig(preset=preset)).run(recommender_program.clone()).figures
        assert fig["latency_pim"].value <= fig["latency_host_only"].value + 1e-9
        assert fig["latency_pim"].value <= fig["latency_greedy"].value + 1e-9
        if "gap_to_exhaustive" in fig:
            assert fig["gap_to_exhaustive"].value <= 1e-6


def test_device_numerics_follow_the_preset(recommender_program, pim_host_model):
    program = (
        PimPartition(PimConfig(preset="hbm-pim", placement="greedy")).run(recommender_program.clone()).program
    )
    program.annotations.partition = dict.fromkeys(program.annotations.partition, 1)  # everything on PIM
    fp16 = run_partitioned(program, resolve_preset("hbm-pim"))
    int8 = run_partitioned(program, resolve_preset("upmem"))
    ref = program.run()
    assert sqnr_db(ref, fp16) > sqnr_db(ref, int8) > 15
    assert placement_of(program)


def test_nothing_to_run_on_pim_is_said(conv_program, pim_host_model, caplog, tmp_path):
    lookups_only = tmp_path / "lookups.toml"
    lookups_only.write_text('base = "recnmp"\nname = "lookups"\nsupports = ["gather"]\n')
    with caplog.at_level(logging.WARNING):
        result = PimPartition(PimConfig(preset=str(lookups_only))).run(conv_program.clone())
    assert result.figures["pim_ops"].value == 0 and not result.modified
    assert "has no op the lookups device can run" in caplog.text


def test_bad_options():
    with pytest.raises(UnknownNameError, match="hbm-pim"):
        PimConfig(preset="pim9000")
    with pytest.raises(ConfigError):
        PimConfig.from_dict({"preset": "hbm-pim", "objective": "speed"})


def test_a_table_larger_than_the_device_stays_on_the_host(
    recommender_program, pim_host_model, caplog, tmp_path
):
    small = tmp_path / "small.toml"
    small.write_text('base = "hbm-pim"\nname = "hbm-tiny"\ncapacity_gib = 1e-6\n')  # ~1 KiB
    with caplog.at_level(logging.WARNING):
        result = PimPartition(PimConfig(preset=str(small), placement="greedy")).run(
            recommender_program.clone()
        )
    assert "exceed the hbm-tiny device" in caplog.text
    assert result.figures["pim_resident_bytes"].value == 0
