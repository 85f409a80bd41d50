import math
import random

import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.nn.supernet import (
    OPERATOR_CLASSES,
    OPERATORS,
    BlockChoice,
    RecSupernet,
    Subnet,
    SupernetConfig,
    open_ends,
    sample_choice,
)
from optkit.zoo.data import CRITEO_CARDINALITIES, criteo_like
from optkit.zoo.recsys import RecsysConfig, example_inputs, fit, train_supernet
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model

CRITEO = SupernetConfig(
    num_dense=13, cardinalities=CRITEO_CARDINALITIES, embed_dim=8, dims=(8, 16), max_rows=512
)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero values everywhere (the wide id weights start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return module


def test_registry_entry_and_sizes() -> None:
    entry = get_model("recsys")
    assert entry.task == "recommendation" and entry.sampler == ""
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, Subnet) and tiny.choice == RecsysConfig.tiny().choice
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 4 * n_tiny < 2_500_000 / 1.0  # float32 checkpoint under 2.5 MB
    small = entry.build(entry.configs["small"])
    assert sum(p.numel() for p in small.parameters()) > 2 * n_tiny
    dense, sparse = example_inputs(tiny, 3, seed=1)
    assert dense.shape == (3, 22) and sparse.shape == (3, 8) and sparse.dtype == torch.int64
    assert all(int(sparse[:, f].max()) < c for f, c in enumerate(tiny.config.cardinalities))
    assert torch.equal(sparse, example_inputs(tiny, 3, seed=1)[1])
    with torch.no_grad():
        assert tiny(dense, sparse).shape == (3,)


@pytest.mark.parametrize("config", [RecsysConfig.tiny().supernet(), CRITEO], ids=["movielens", "criteo"])
def test_subnet_matches_supernet_for_sampled_choices(config: SupernetConfig) -> None:
    supernet = randomize(RecSupernet(config)).eval()
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(5, config.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, 2 * c, (5,), generator=gen) for c in config.cardinalities], dim=1)
    rng = random.Random(0)
    seen = set()
    for _ in range(8):
        choice = sample_choice(config, rng)
        sub = supernet.subnet(choice).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                sub(dense, sparse), supernet(dense, sparse, choice), atol=1e-5, rtol=1e-5
            )
        for block, c in zip(sub.blocks, choice, strict=True):
            assert type(block) is OPERATOR_CLASSES[c.op]  # only the chosen operator is kept
            assert block.fc.out_features == c.dim  # sliced to the chosen width
            seen.add(c.op)
        supernet_params = sum(p.numel() for p in supernet.parameters())
        assert sum(p.numel() for p in sub.parameters()) < supernet_params / 2
    assert seen == set(OPERATORS)


def test_subnet_input_slicing_follows_sources() -> None:
    cfg = RecsysConfig.tiny()
    choice = (
        BlockChoice("mlp", 16, (1,)),
        BlockChoice("cross", 32, (0, 2)),
        BlockChoice("attention", 16, (2, 3)),
        BlockChoice("dot", 64, (0, 4)),
    )
    sub = RecSupernet(cfg.supernet()).subnet(choice)
    assert sub.blocks[0].fc.in_features == (22 + 8) * 16  # the flattened dense and sparse tokens
    assert sub.blocks[1].v.in_features == 64 + 16  # stem + block 0
    assert sub.blocks[2].proj.in_features == 16 + 32
    assert sub.blocks[3].proj.in_features == 64 + 16
    assert open_ends(choice) == [3] and sub.head.in_features == 64
    assert open_ends((BlockChoice("mlp", 16, (0,)),) * 4) == [0, 1, 2, 3]


def test_hashing_wraps_large_ids() -> None:
    cfg = SupernetConfig(num_dense=2, cardinalities=(5000, 3), max_rows=100, dims=(4,), num_blocks=1)
    assert cfg.rows == (100, 3)
    sub = randomize(Subnet(cfg, (BlockChoice("fm", 4, (0, 1)),))).eval()
    dense = torch.zeros(2, 2)
    with torch.no_grad():
        a = sub(dense, torch.tensor([[7, 1], [4321, 2]]))
        b = sub(dense, torch.tensor([[107, 1], [21, 2]]))
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize(get_model("recsys").create("tiny", pretrained=False)).eval()
    inputs = example_inputs(model, 4, seed=0)
    program = capture(model, inputs, name="recsys")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert [p for p in program.block_paths() if p.startswith("blocks.")] == [f"blocks.{i}" for i in range(4)]
    figures = export_onnx(program, tmp_path / "recsys.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-3


def test_supernet_training_on_criteo_like_reduces_loss() -> None:
    data = criteo_like(2000, seed=0)
    torch.manual_seed(0)
    supernet = RecSupernet(CRITEO)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(0)
    train_supernet(supernet, data["train"], 50, 128, 3e-3, gen, lambda s, loss: losses.append(loss))
    assert len(losses) == 50 and math.isfinite(losses[-1])
    assert losses[-1] < losses[0] - 0.03
    sub = supernet.subnet(sample_choice(CRITEO, random.Random(1)))
    before = torch.nn.functional.binary_cross_entropy_with_logits(
        sub(data["test"]["dense"], data["test"]["sparse"]), data["test"]["labels"]
    )
    fit(list(sub.parameters()), lambda d, s, g: sub(d, s), data["train"], 30, 128, 3e-3, gen)
    after = torch.nn.functional.binary_cross_entropy_with_logits(
        sub(data["test"]["dense"], data["test"]["sparse"]), data["test"]["labels"]
    )
    assert after < before


@pytest.mark.slow
def test_zoo_train_and_evaluate_on_movielens() -> None:
    entry = get_model("recsys")
    model = entry.create("tiny", pretrained=False)
    losses: list[float] = []
    settings = TrainSettings(
        steps=12, batch_size=128, lr=2e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = entry.train(model, settings)
    assert len(losses) == 12 and figures["final_loss"] == pytest.approx(losses[-1])
    assert set(figures) >= {"final_loss", "supernet_loss", "seconds"}
    scores = entry.evaluate(model, EvalSettings(num_samples=500, batch_size=256))
    assert scores["rows"] == 500
    assert 0.5 < scores["baseline_auc"] < 1 and 0.3 < scores["baseline_log_loss"] < 0.7
    assert 0.0 <= scores["auc"] <= 1.0 and math.isfinite(scores["log_loss"])


def test_choice_and_config_errors() -> None:
    cfg = RecsysConfig.tiny()
    with pytest.raises(ConfigError, match="operator"):
        cfg.check_choice((BlockChoice("gate", 16, (0,)),) * 4)
    with pytest.raises(ConfigError, match="dim"):
        cfg.check_choice((BlockChoice("mlp", 24, (0,)),) * 4)
    with pytest.raises(ConfigError, match="sources"):
        cfg.check_choice((BlockChoice("mlp", 16, (0, 5)),) * 4)
    with pytest.raises(ConfigError, match="4 block choices"):
        cfg.check_choice((BlockChoice("mlp", 16, (0,)),))
    with pytest.raises(ConfigError, match="dims"):
        SupernetConfig(dims=(32, 16))
    with pytest.raises(ConfigError, match="dropout"):
        SupernetConfig(dropout=1.0)


def test_shipped_checkpoint_beats_the_logistic_regression_baseline() -> None:
    entry = get_model("recsys")
    assert entry.checkpoint_path("tiny").stat().st_size <= 2_500_000
    model = entry.create("tiny")  # loads the shipped checkpoint
    scores = entry.evaluate(model, EvalSettings(num_samples=20000, batch_size=5000))  # the whole test split
    assert scores["rows"] == 20000
    assert scores["auc"] > scores["baseline_auc"] + 0.003
    assert scores["log_loss"] < scores["baseline_log_loss"]


def _front_trial(number: int, choice: tuple[BlockChoice, ...], auc: float) -> dict:
    return {
        "number": number,
        "candidate": {"choice": [[c.op, c.dim, list(c.sources)] for c in choice], "hardware": {}},
        "scores": {"auc": auc, "latency_us": 100.0 + number},
    }


def test_repick_trains_the_best_front_architectures_and_the_current_one(tmp_path) -> None:
    import json

    from optkit.zoo.recsys import TINY_CHOICE, repick

    searched = (BlockChoice("mlp", 16, (0,)),) * 3 + (BlockChoice("dot", 16, (1, 2, 3, 4)),)
    front = [
        _front_trial(3, searched, 0.70),
        _front_trial(7, searched, 0.75),
        _front_trial(9, TINY_CHOICE, 0.60),
    ]
    (tmp_path / "pareto.json").write_text(json.dumps({"front": front}))
    results = repick(tmp_path, top=1, settings=TrainSettings(steps=4, batch_size=64))
    # top 1 distinct architecture by inherited AUC (trial 7 over its duplicate 3), and the
    # current choice, which is on this front but not in its top 1.
    assert [r["source"] for r in sorted(results, key=lambda r: r["source"])] == [
        "current TINY_CHOICE",
        "search trial #7",
    ]
    assert results[0]["validation_auc"] >= results[1]["validation_auc"]
    picked = next(r for r in results if r["source"] == "search trial #7")
    assert picked["choice"] == searched and picked["inherited_auc"] == 0.75
    assert all(0.0 <= r["test_auc"] <= 1.0 for r in results)


def test_repick_refuses_a_folder_without_a_search(tmp_path) -> None:
    from optkit.zoo.recsys import repick

    with pytest.raises(ConfigError, match="pareto.json"):
        repick(tmp_path)
    (tmp_path / "pareto.json").write_text("{}")
    with pytest.raises(ConfigError, match="optkit search"):
        repick(tmp_path)
