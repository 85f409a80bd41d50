"""`optkit zoo train` / `optkit zoo eval` through click's runner."""

import json

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from optkit.cli.main import cli
from optkit.zoo.registry import get_model


@pytest.mark.slow
def test_train_uses_recipe_defaults_and_options_override(tmp_path):
    out = tmp_path / "dit.safetensors"
    args = [
        "--json",
        "zoo",
        "train",
        "dit",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-4",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert figures["checkpoint"] == str(out)
    state = load_file(str(out))
    assert set(state) == set(get_model("dit").create("tiny", pretrained=False).state_dict())


def test_eval_reads_a_given_checkpoint(tmp_path):
    out = tmp_path / "dit.safetensors"
    assert (
        CliRunner()
        .invoke(cli, ["zoo", "train", "dit", "--steps", "1", "--batch-size", "2", "-o", str(out)])
        .exit_code
        == 0
    )
    args = ["--json", "zoo", "eval", "dit", "--samples", "4", "--steps", "2", "--checkpoint", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    assert set(figures) == {"fd_digits", "class_accuracy"}
    assert 0.0 <= figures["class_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zoo", "train", "dit", "--steps", "0"], "must be positive"),
        (["zoo", "train", "dit", "--lr", "-1"], "must be positive"),
        (["zoo", "train", "dit", "-o", "weights.pt"], "must be a .safetensors file"),
        (["zoo", "train", "nosuchmodel"], "unknown zoo model 'nosuchmodel'"),
        (["zoo", "eval", "dit", "--samples", "0"], "must be positive"),
    ],
)
def test_bad_zoo_input_is_a_clean_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
