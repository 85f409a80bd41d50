import math

import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.nn.group_attention import GroupLayout, GroupSelfAttention, group_attention_mask
from optkit.zoo.data import apply_action, digits
from optkit.zoo.instamanip import (
    InstaManip,
    InstaManipConfig,
    episodes,
    example_inputs,
    relation_loss,
    undo_geometry,
)
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model

TINY = InstaManipConfig(dim=32, depth=2, heads=2, manip_tokens=4)


def test_registry_entry_and_sizes() -> None:
    entry = get_model("instamanip")
    assert entry.task == "multimodal" and entry.sampler == ""
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, InstaManip)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 300_000 <= n_tiny <= 600_000
    small = entry.build(entry.configs["small"])
    assert 3 <= sum(p.numel() for p in small.parameters()) / n_tiny <= 10
    assert isinstance(tiny.blocks, nn.ModuleList) and len(tiny.blocks) == 4


def test_group_mask_semantics() -> None:
    cfg = InstaManipConfig.tiny()
    layout = cfg.layout()
    mask = InstaManip(cfg).attention_mask
    n, m = cfg.image_tokens, cfg.manip_tokens
    assert mask.shape == (4 * n + m + 2 * n,) * 2 and mask.dtype == torch.bool
    pairs = [layout.span(f"pair_{i}") for i in range(cfg.exemplars)]
    manip, query, gen = layout.span("manip"), layout.span("query"), layout.span("gen")
    for i, rows in enumerate(pairs):
        assert mask[rows, rows].all()  # an exemplar pair attends within itself (before <-> after)
        for j, cols in enumerate(pairs):
            if j != i:
                assert not mask[rows, cols].any()  # ... and not to the other pairs
        for cols in (manip, query, gen):
            assert not mask[rows, cols].any()  # exemplars never see Z, the query or the output
    for cols in pairs:
        assert mask[manip, cols].all()  # learning: Z reads every exemplar
        assert not mask[query, cols].any() and not mask[gen, cols].any()  # applying: no raw exemplar
    assert mask[manip, manip].all() and not mask[manip, query].any() and not mask[manip, gen].any()
    assert mask[query, manip].all() and mask[query, query].all() and not mask[query, gen].any()
    assert mask[gen, manip].all() and mask[gen, query].all() and mask[gen, gen].all()
    for block in InstaManip(cfg).blocks:
        assert torch.equal(block.attn.mask, mask)


def test_mask_semantics_in_the_computation() -> None:
    torch.manual_seed(0)
    model = InstaManip(TINY).eval()
    layout = model.layout
    before, after, query = example_inputs(model, 2, seed=0)
    other_query = torch.flip(query, dims=(0,))
    other_pair1 = (before.clone(), after.clone())
    other_pair1[0][:, 1] = -other_pair1[0][:, 1]
    other_pair1[1][:, 1] = -other_pair1[1][:, 1]

    def states(b: torch.Tensor, a: torch.Tensor, q: torch.Tensor, depth: int) -> torch.Tensor:
        captured = []
        hook = model.blocks[depth - 1].register_forward_hook(lambda mod, inp, out: captured.append(out))
        with torch.no_grad():
            model(b, a, q)
        hook.remove()
        return captured[0]

    learning = slice(0, layout.span("manip").stop)
    applying = slice(layout.span("query").start, layout.length)
    pair0 = layout.span("pair_0")
    # Exemplars and Z never see the query: at every depth their states ignore it.
    for depth in (1, 2):
        base, changed = states(before, after, query, depth), states(before, after, other_query, depth)
        assert torch.equal(base[:, learning], changed[:, learning])
        assert not torch.allclose(base[:, applying], changed[:, applying])
    # One pair does not see another pair.
    base = states(before, after, query, 2)
    changed = states(*other_pair1, query, 2)
    assert torch.equal(base[:, pair0], changed[:, pair0])
    # The query side sees no raw exemplar token: after one block (Z still holds only its learned
    # value) its states do not depend on the exemplars; from the second block on they do,
    # through Z only.
    assert torch.equal(
        states(before, after, query, 1)[:, applying], states(*other_pair1, query, 1)[:, applying]
    )
    assert not torch.allclose(base[:, applying], changed[:, applying])


def test_group_layout_rules_and_errors() -> None:
    layout = GroupLayout(groups=(("a", 2), ("b", 3)), sees={"a": ("a",), "b": ("a", "b")}, causal=("b",))
    mask = group_attention_mask(layout)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected) and layout.span("b") == slice(2, 5)
    with pytest.raises(ConfigError, match="unknown groups"):
        GroupLayout(groups=(("a", 2),), sees={"a": ("z",)})
    with pytest.raises(ConfigError, match="missing"):
        GroupLayout(groups=(("a", 2), ("b", 1)), sees={"a": ("a",)})
    with pytest.raises(ConfigError, match="attend to no token"):
        GroupSelfAttention(8, 2, GroupLayout(groups=(("a", 2), ("b", 1)), sees={"a": ("a",), "b": ()}))
    with pytest.raises(ConfigError, match="patch"):
        InstaManipConfig(patch=3)
    with pytest.raises(ConfigError, match="heads"):
        InstaManipConfig(dim=96, heads=5)


def test_group_attention_matches_reference() -> None:
    torch.manual_seed(0)
    layout = GroupLayout(groups=(("a", 3), ("b", 2)), sees={"a": ("a",), "b": ("a", "b")})
    attn = GroupSelfAttention(8, 2, layout)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / 2.0  # sqrt(head dim 4)
    scores = scores.masked_fill(~group_attention_mask(layout), -math.inf)
    ref = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_episodes_share_one_action_and_shapes() -> None:
    images, labels = digits("test", 16)
    ep = episodes(images, labels, 8, 3, torch.Generator().manual_seed(1))
    assert ep["before"].shape == (8, 3, 1, 16, 16) and ep["query"].shape == (8, 1, 16, 16)
    assert sorted(ep["action"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # actions in turn
    for i in range(8):
        act = ep["action"][i].repeat(3)
        assert torch.equal(ep["after"][i], apply_action(ep["before"][i], act))
        assert torch.equal(ep["target"][i : i + 1], apply_action(ep["query"][i : i + 1], act[:1]))
    again = episodes(images, labels, 8, 3, torch.Generator().manual_seed(1))
    assert all(torch.equal(ep[k], again[k]) for k in ep)
    # undo_geometry inverts rotate and flip exactly
    undone = undo_geometry(ep["target"], ep["action"])
    geometric = (ep["action"] == 1) | (ep["action"] == 2)
    assert torch.equal(undone[geometric], ep["query"][geometric])


def test_patchify_roundtrip_and_forward_shapes() -> None:
    model = InstaManip(TINY).eval()
    img = torch.randn(2, 1, 16, 16)
    patches = model.patchify(img)
    assert patches.shape == (2, 16, 16)
    assert torch.equal(patches[0, 1], img[0, 0, 0:4, 4:8].reshape(-1))  # raster order, row-major pixels
    assert torch.equal(model.unpatchify(patches), img)
    inputs = example_inputs(model, 2, seed=3)
    for a, b in zip(inputs, example_inputs(model, 2, seed=3), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        out, manip = model.forward_features(*inputs)
    assert out.shape == (2, 1, 16, 16) and manip.shape == (2, 4, 32) and torch.isfinite(out).all()


def test_relation_loss() -> None:
    action = torch.tensor([0, 0, 1])
    aligned = torch.zeros(3, 2, 4)
    aligned[:2, :, 0] = 1.0
    aligned[2, :, 1] = 1.0
    assert relation_loss(aligned, action).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(torch.ones(3, 2, 4), action).item() == pytest.approx(4 / 9)


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    torch.manual_seed(0)
    model = InstaManip(TINY).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="instamanip")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert [p for p in program.block_paths() if p.startswith("blocks.")] == ["blocks.0", "blocks.1"]
    assert len(program.attention_sites()) == 2
    # The group mask is a constant of the captured graph, not an input.
    assert len(program.graph_module.graph.find_nodes(op="placeholder")) == 3
    figures = export_onnx(program, tmp_path / "instamanip.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2
    # The exported graph reads the query (the mask did not cut it off from the output).
    from optkit.ir.onnx_io import run_onnx

    other = (inputs[0], inputs[1], -inputs[2])
    out_a, out_b = (
        run_onnx(tmp_path / "instamanip.onnx", inputs)[0],
        run_onnx(tmp_path / "instamanip.onnx", other)[0],
    )
    assert abs(out_a - out_b).max() > 1e-3


def test_training_reduces_loss_and_evaluate_is_finite() -> None:
    entry = get_model("instamanip")
    torch.manual_seed(0)
    model = InstaManip(TINY)
    images, labels = digits("test", 16)
    held_out = episodes(images, labels, 32, TINY.exemplars, torch.Generator().manual_seed(5))

    def held_out_mse() -> float:
        with torch.no_grad():
            pred = model(held_out["before"], held_out["after"], held_out["query"])
        return float(torch.nn.functional.mse_loss(pred, held_out["target"]))

    before_training = held_out_mse()
    losses: list[float] = []
    settings = TrainSettings(
        steps=40, batch_size=16, lr=3e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = entry.train(model, settings)  # type: ignore[misc]
    assert len(losses) == 40 and figures["final_loss"] == pytest.approx(losses[-1])
    assert losses[-1] < losses[0] and held_out_mse() < 0.5 * before_training
    assert not model.training
    scores = entry.evaluate(InstaManip(TINY), EvalSettings(num_samples=8, batch_size=4))  # type: ignore[misc]
    names = {"psnr_db", "copy_query_psnr_db", "wrong_exemplars_psnr_db", "identity_accuracy"}
    assert names <= set(scores) and all(math.isfinite(v) for v in scores.values())
    assert {f"psnr_db_{a}" for a in ("shift", "rotate", "flip", "thicken")} <= set(scores)
    assert scores["identity_accuracy_true_edit"] >= 0.75


def test_shipped_checkpoint_learns_the_edit_from_the_exemplars() -> None:
    entry = get_model("instamanip")
    assert entry.checkpoint_path("tiny").exists()
    model = entry.create("tiny")  # loads the shipped weights
    scores = entry.evaluate(model, EvalSettings(num_samples=32, seed=7))  # type: ignore[misc]
    # Well above returning the query unedited, and the exemplars matter: with exemplars of
    # another action the same queries come out far worse.
    assert scores["psnr_db"] > scores["copy_query_psnr_db"] + 6.0
    assert scores["psnr_db"] > scores["wrong_exemplars_psnr_db"] + 6.0
    assert scores["identity_accuracy"] >= 0.7


def test_training_is_seeded() -> None:
    entry = get_model("instamanip")
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # same init; train() seeds the episodes it draws
        model = InstaManip(TINY)
        entry.train(model, TrainSettings(steps=3, batch_size=4, lr=1e-3, seed=1))  # type: ignore[misc]
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
