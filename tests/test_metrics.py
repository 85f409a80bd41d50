import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from optkit import metrics
from optkit.errors import ConfigError


def test_sqnr_and_psnr_known_values():
    ref = torch.ones(100)
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.psnr_db(ref, ref) == math.inf
    # Signal power 1, noise power 0.01 -> 20 dB; PSNR with range 2: 10 log10(4 / 0.01).
    assert metrics.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)
    assert metrics.psnr_db(ref, ref + 0.1) == pytest.approx(10 * math.log10(400.0))
    assert metrics.psnr_db(ref, ref + 0.1, data_range=1.0) == pytest.approx(20.0)
    # Rounding a uniform signal on [-1, 1] to steps of 1/127: power ratio (1/3) / (step^2 / 12).
    x = np.random.default_rng(0).uniform(-1, 1, 100_000)
    q = np.round(x * 127) / 127
    assert metrics.sqnr_db(x, q) == pytest.approx(10 * math.log10(4 * 127**2), abs=0.2)


def test_inputs_are_validated():
    with pytest.raises(ConfigError, match="shapes differ"):
        metrics.sqnr_db(torch.ones(3), torch.ones(4))
    with pytest.raises(ConfigError, match="NaN"):
        metrics.psnr_db(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ConfigError, match="data_range"):
        metrics.psnr_db(torch.ones(2), torch.ones(2), data_range=0)
    with pytest.raises(ConfigError, match="both|positive"):
        metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="0 or 1"):
        metrics.log_loss([0, 2], [0.5, 0.5])


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected)
    assert metrics.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-9)
    # Singular covariances do not break it.
    assert np.isfinite(metrics.frechet_distance(mu1, np.zeros((3, 3)), mu2, np.diag(b)))
    with pytest.raises(ConfigError, match="shapes"):
        metrics.frechet_distance(mu1, np.eye(2), mu2, np.eye(3))


def test_miou_known_cases():
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1  # top half
    masks[1, :, :2] = 1  # left half
    assert metrics.miou(masks, masks) == 1.0
    pred = torch.zeros(2, 4, 4)
    pred[0] = 1  # IoU 8/16
    pred[1, :, :1] = 1  # IoU 4/8
    assert metrics.miou(pred, masks) == pytest.approx(0.5)
    logits = masks * 8 - 4  # (N, H, W) logits, thresholded at 0
    assert metrics.miou(logits[:, None], masks) == 1.0
    low = torch.full((2, 1, 2, 2), -5.0)  # low-resolution logits are resized to the masks
    low[0, :, 0] = 5.0
    low[1, :, :, 0] = 5.0
    assert metrics.miou(low, masks) == 1.0
    assert metrics.miou(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)) == 1.0  # both empty


def test_roc_auc_and_log_loss_match_sklearn():
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(labels * 0.3 + rng.uniform(0, 1, 500), 1)  # many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    probs = 1 / (1 + np.exp(-(scores - 0.6) * 3))
    assert metrics.log_loss(torch.tensor(labels), torch.tensor(probs)) == pytest.approx(
        sk_log_loss(labels, probs)
    )


def test_latency_helper():
    out = metrics.latency_ms(lambda: sum(range(100)), warmup=1, repeats=5)
    assert out["p10"] <= out["median"] <= out["p90"]


def test_metrics_import_nothing_from_the_zoo():
    # Generic numbers sit below the zoo; the digits metrics live in optkit.zoo.digits_metrics.
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("optkit.zoo")]
