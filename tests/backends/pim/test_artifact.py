"""`optkit lower --target pim:PRESET` and `optkit run`: TVM host segments + simulated PIM segments."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from optkit.backends.pim.artifact import load_pim_artifact, split
from optkit.backends.pim.simulate import placement_of, run_partitioned
from optkit.passes.pim import PimConfig, PimPartition

from optkit.cli.main import cli
from optkit.errors import ArtifactError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.serialize import save_program
from optkit.metrics import sqnr_db


@pytest.fixture
def partitioned(recommender_program, pim_host_model):
    """The recommender with its embedding bag on UPMEM (int8) and the MLP on the host."""
    return (
        PimPartition(PimConfig(preset="upmem", placement="greedy")).run(recommender_program.clone()).program
    )


def test_split_runs_like_the_partitioned_graph(partitioned):
    parts, sides = split(partitioned, placement_of(partitioned))
    assert 1 in sides and 0 in sides
    for k in range(len(sides)):  # each segment holds its own weights, activations come in
        sub = getattr(parts, f"submod_{k}")
        assert all(n.op != "placeholder" or "weight" not in n.name for n in sub.graph.nodes)
    (got,) = flat_outputs(parts(*partitioned.example_inputs))
    np.testing.assert_allclose(got.detach(), partitioned.run(), rtol=1e-6)


@pytest.mark.slow
def test_lower_and_run_through_the_cli(partitioned, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_program(partitioned, tmp_path / "model.pt2")
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "lower", "model.pt2", "--target", "pim:upmem", "-o", "art"])
    assert result.exit_code == 0, result.output
    assert "ops on PIM" in result.output
    for name in ("pim.json", "model.pt2", "gantt.png", "trace.md", "host_0"):
        assert (tmp_path / "art" / name).exists(), name
    ids, dense = (t.numpy() for t in partitioned.example_inputs)
    np.savez(tmp_path / "x.npz", ids, dense)
    result = runner.invoke(cli, ["--json", "run", "art", "--inputs", "x.npz", "-o", "y.npz"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["target"] == "pim:upmem" and summary["modeled_latency_us"] > 0
    got = np.load(tmp_path / "y.npz")["output_0"]
    eager = run_partitioned(partitioned, load_pim_artifact(tmp_path / "art").preset).numpy()
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-5)  # TVM host part = eager host part
    assert sqnr_db(partitioned.run(), got) > 20  # int8 on UPMEM costs little


def test_tampered_manifest_is_refused(partitioned, tmp_path):
    from optkit.backends.pim.artifact import lower_pim

    lower_pim(partitioned, "upmem").save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "pim.json").read_text())
    manifest["segments"] = manifest["segments"][:1]
    (tmp_path / "art" / "pim.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="segments"):
        load_pim_artifact(tmp_path / "art")
    result = CliRunner().invoke(
        cli, ["lower", "zoo:recsys", "--target", "pim:nope", "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "hbm-pim" in result.output
