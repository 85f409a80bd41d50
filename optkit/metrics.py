"""Quality metrics as plain numbers: SQNR, PSNR, Fréchet distance, mIoU, ROC AUC, log loss.

Quantized and cached models are judged against the float model on the same seeds (`sqnr_db`,
`psnr_db`); feature distributions by the Fréchet distance between Gaussians fitted to them
(`frechet_distance`, the core of FID, Heusel et al., 2017); segmentation by `miou`;
recommenders by `roc_auc` and `log_loss`. Every metric takes tensors, arrays or sequences and
returns a float; none knows about models or data sets. The digit-quality metrics built on a
trained classifier (`fd_digits`, `class_accuracy`, `video_quality`) live with the zoo, in
`zoo/digits_metrics.py`.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optkit.errors import ConfigError
from optkit.timing import latency_ms

__all__ = [
    "frechet_distance",
    "latency_ms",
    "log_loss",
    "miou",
    "psnr_db",
    "roc_auc",
    "sqnr_db",
]

log = logging.getLogger(__name__)

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence of numbers


def _array(x: ArrayLike, name: str) -> np.ndarray:
    """float64 numpy copy of `x`; NaN or infinity is a ConfigError naming `name`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"{name} contains NaN or infinite values ({np.sum(~np.isfinite(arr))} of {arr.size})"
        )
    return arr


def _pair(reference: ArrayLike, test: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ref, out = _array(reference, "reference"), _array(test, "test")
    if ref.shape != out.shape:
        raise ConfigError(f"reference and test shapes differ: {ref.shape} vs {out.shape}")
    if ref.size == 0:
        raise ConfigError("reference and test are empty")
    return ref, out


def sqnr_db(reference: ArrayLike, test: ArrayLike) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum ref^2 / sum (ref - test)^2) in dB.

    `inf` when `test` equals `reference`; higher is better (about 6 dB per bit of a uniform
    quantizer). Inputs are tensors or arrays of the same shape without NaN.
    """
    ref, out = _pair(reference, test)
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def psnr_db(reference: ArrayLike, test: ArrayLike, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB (`inf` when equal).

    `data_range` is max - min of the signal: 2.0 for the zoo's images in [-1, 1].
    """
    if not data_range > 0:
        raise ConfigError(f"data_range must be > 0, got {data_range}")
    ref, out = _pair(reference, test)
    mse = float(np.mean((ref - out) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def frechet_distance(mu1: ArrayLike, s1: ArrayLike, mu2: ArrayLike, s2: ArrayLike) -> float:
    """Fréchet distance between Gaussians N(mu1, s1) and N(mu2, s2).

    d^2 = |mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)). The matrix square root comes from
    `scipy.linalg.sqrtm`; when it is not finite (singular covariances) both covariances get
    1e-6 on the diagonal, and tiny imaginary parts from round-off are dropped.
    """
    from scipy import linalg

    m1, m2 = _array(mu1, "mu1").ravel(), _array(mu2, "mu2").ravel()
    c1, c2 = _array(s1, "s1"), _array(s2, "s2")
    d = m1.shape[0]
    if m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ConfigError(
            f"shapes must be mu (D,), sigma (D, D); got {m1.shape}, {c1.shape}, {m2.shape}, {c2.shape}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular inputs are handled below
        covmean = linalg.sqrtm(c1 @ c2)
        if not np.all(np.isfinite(covmean)):
            eye = np.eye(d) * 1e-6
            covmean = linalg.sqrtm((c1 + eye) @ (c2 + eye))
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(covmean.imag)))
        if imag > 1e-3 * max(1.0, float(np.max(np.abs(covmean.real)))):
            log.warning("frechet_distance: sqrtm has an imaginary part of %.3g; using the real part", imag)
        covmean = covmean.real
    diff = m1 - m2
    value = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def miou(pred_logits_or_masks: ArrayLike, masks: ArrayLike) -> float:
    """Mean intersection-over-union of predicted and true binary masks over the images.

    `pred_logits_or_masks` holds either binary masks ({0, 1} or bool) or logits (thresholded at
    0), shaped (N, H, W) or (N, 1, H, W); logits at another resolution are resized bilinearly to
    the masks' (N, H, W). An image where both masks are empty counts as IoU 1.
    """
    pred = torch.as_tensor(_array(pred_logits_or_masks, "pred_logits_or_masks"))
    true = torch.as_tensor(_array(masks, "masks"))
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if true.dim() == 4 and true.shape[1] == 1:
        true = true[:, 0]
    if true.dim() != 3 or pred.dim() != 3 or pred.shape[0] != true.shape[0]:
        raise ConfigError(
            f"expected (N, H, W) predictions and masks, got {tuple(pred.shape)} and {tuple(true.shape)}"
        )
    binary = bool(torch.all((pred == 0) | (pred == 1)))
    if pred.shape != true.shape:
        if binary:
            raise ConfigError(
                f"binary masks must match the true masks' shape: {tuple(pred.shape)} vs {tuple(true.shape)}"
            )
        pred = F.interpolate(pred[:, None], size=true.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    p = pred > 0.5 if binary else pred > 0
    t = true > 0.5
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(iou.mean())


def _binary_labels(labels: ArrayLike, other: np.ndarray, other_name: str) -> np.ndarray:
    y = _array(labels, "labels").ravel()
    if y.shape != other.shape:
        raise ConfigError(f"labels and {other_name} differ in shape: {y.shape} vs {other.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ConfigError("labels must be 0 or 1")
    return y


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: the probability a random positive outscores a random negative.

    Computed from ranks (Mann-Whitney U) with ties counted as one half; needs both classes.
    """
    from scipy.stats import rankdata

    s = _array(scores, "scores").ravel()
    y = _binary_labels(labels, s, "scores")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        raise ConfigError(
            f"roc_auc needs positive and negative labels, got {pos} positive and {neg} negative"
        )
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of click probabilities `probs` in [0, 1] (clipped to [eps, 1 - eps])."""
    p = _array(probs, "probs").ravel()
    y = _binary_labels(labels, p, "probs")
    if np.any((p < 0) | (p > 1)):
        raise ConfigError("probs must lie in [0, 1]; apply a sigmoid to logits first")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
