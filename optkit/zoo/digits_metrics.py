"""The digits classifier and the digit-quality metrics built on it: FD-digits, class accuracy.

Digit generators are judged by the Fréchet distance between classifier features of samples and
real digits (`fd_digits`, in the spirit of FID, Heusel et al., 2017), by the classifier's
accuracy on class-conditional samples (`class_accuracy`) and, for videos, per frame and across
frames (`video_quality`). The generic numbers (`frechet_distance`, `sqnr_db`, ...) live in
`optkit.metrics`.

Deviations from FID: the feature extractor is `DigitsClassifier`, a small CNN trained here on
the 4,000 MNIST train digits of `optkit.zoo.data.digits` (not Inception-v3), and its features
are the 64-d penultimate layer. It resizes every input to 16x16 by area interpolation (the same
resize the data uses), so one classifier scores 8x8, 16x16 and 28x28 digits.

Shipped checkpoint `optkit/zoo/checkpoints/digits_classifier.safetensors` (0.38 MB): trained
with seed 0 by

    OMP_NUM_THREADS=1 python -c "from optkit.zoo.digits_metrics import save_digits_classifier as s; print(s())"

in about 45 s on one core (40 epochs, views shifted, shrunk and placed anywhere, or blurred
through 8x8). Accuracy on the 1,000 held-out test digits: 0.977 at 16x16 and 28x28, 0.975 at
12x12, 0.961 at 8x8 (MNIST downscaled); 0.940 on `moving_digits` frames (test split), 0.973 on
the cells of `scene_text`. On scikit-learn's differently drawn 8x8 digits it scores 0.74 only:
use FD there as a relative figure.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ArtifactError, ConfigError
from optkit.metrics import ArrayLike, _array, frechet_distance
from optkit.zoo.data import digits, resize_area

__all__ = [
    "CLASSIFIER_PATH",
    "CLASSIFIER_RESOLUTION",
    "FEATURE_DIM",
    "DigitsClassifier",
    "class_accuracy",
    "fd_digits",
    "load_digits_classifier",
    "save_digits_classifier",
    "train_digits_classifier",
    "video_quality",
]

log = logging.getLogger(__name__)

CLASSIFIER_PATH = Path(__file__).parent / "checkpoints" / "digits_classifier.safetensors"
CLASSIFIER_RESOLUTION = 16
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """Small CNN classifying digits in [-1, 1] at any resolution (resized to 16x16 inside).

    conv3x3(32) -> conv3x3(32) -> maxpool -> conv3x3(64) -> maxpool -> linear(64) -> linear(10).
    `features(x)` returns the 64-d penultimate activations that `fd_digits` compares.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 64) of digits (B, C, H, W); channels are averaged."""
        if x.dim() != 4:
            raise ConfigError(f"digits must be (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
        x = resize_area(x, CLASSIFIER_RESOLUTION)  # (B, 1, 16, 16)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 8, 8)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (B, 64, 4, 4)
        return F.relu(self.fc(x.flatten(1)))  # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 10)."""
        return self.head(self.features(x))


def _augment(
    x: torch.Tensor, small: list[torch.Tensor], idx: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Training views of digits `idx`: half shifted by up to 1 px, half shrunk and placed anywhere.

    The shrunk views (5/8 to 15/16 of the canvas, as in `moving_digits` frames) keep the
    classifier accurate on digits that are not centered; a quarter of all views are blurred
    through 8x8; light noise is added to every view.
    """
    r = x.shape[-1]
    padded = F.pad(x[idx], (1, 1, 1, 1), value=-1.0)  # (B, 1, R+2, R+2)
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    out = padded[..., dy : dy + r, dx : dx + r].clone()  # (B, 1, R, R)
    for b in torch.nonzero(torch.rand(len(idx), generator=gen) < 0.5).ravel().tolist():
        glyphs = small[int(torch.randint(0, len(small), (1,), generator=gen))]
        s = glyphs.shape[-1]
        oy, ox = torch.randint(0, r - s + 1, (2,), generator=gen).tolist()
        out[b] = -1.0
        out[b, :, oy : oy + s, ox : ox + s] = glyphs[idx[b]]
    # A quarter of the views pass through 8x8 and back, as 8x8 inputs reach the network.
    low = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.25
    coarse = F.interpolate(resize_area(out, 8), size=(r, r), mode="bilinear", align_corners=False)
    out = torch.where(low, coarse, out)
    return (out + 0.05 * torch.randn(out.shape, generator=gen)).clamp(-1, 1)


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    correct = 0
    for i in range(0, len(labels), batch):
        correct += int((model(images[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum())
    return correct / len(labels)


def train_digits_classifier(seed: int = 0, epochs: int = 40) -> tuple[DigitsClassifier, float]:
    """Train a `DigitsClassifier` on the `digits` train split at 16x16; return it and its test accuracy.

    Adam (lr 2e-3, cosine decay), batch 64, `epochs` passes with shift/noise augmentation.
    Seeded: the global RNG is forked, so the caller's random state is left untouched.
    """
    x_train, y_train = digits("train", CLASSIFIER_RESOLUTION, seed=seed)
    x_test, y_test = digits("test", CLASSIFIER_RESOLUTION, seed=seed)
    # Same seed, same order: row i of every resolution is the same digit.
    small = [digits("train", size, seed=seed)[0] for size in range(10, CLASSIFIER_RESOLUTION)]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    batch = 64
    steps = epochs * (len(y_train) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(_augment(x_train, small, idx, gen)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        log.info("digits classifier epoch %d: loss %.4f", epoch, loss.item())
    model.eval()
    return model, _accuracy(model, x_test, y_test)


def save_digits_classifier(path: str | Path = CLASSIFIER_PATH, seed: int = 0) -> float:
    """Train the digits classifier with `seed`, save it to `path` (safetensors); return test accuracy."""
    from safetensors.torch import save_file

    model, accuracy = train_digits_classifier(seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"test_accuracy": f"{accuracy:.4f}", "seed": str(seed)})
    return accuracy


def load_digits_classifier(path: str | Path = CLASSIFIER_PATH) -> DigitsClassifier:
    """Load the shipped digits classifier (eval mode); ArtifactError if the file is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ArtifactError(
            f"digits classifier checkpoint {path} is missing; recreate it with "
            '`python -c "from optkit.zoo.digits_metrics import save_digits_classifier; save_digits_classifier()"`'
        )
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@functools.lru_cache(maxsize=1)
def _shipped_classifier() -> DigitsClassifier:
    model = load_digits_classifier()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _digit_images(x: ArrayLike, name: str) -> torch.Tensor:
    arr = torch.as_tensor(_array(x, name), dtype=torch.float32)
    if arr.dim() != 4 or arr.shape[0] == 0:
        raise ConfigError(f"{name} must be non-empty digit images (N, C, H, W), got shape {tuple(arr.shape)}")
    return arr


@torch.no_grad()
def _features(images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    model = _shipped_classifier()
    parts = [model.features(images[i : i + batch]) for i in range(0, images.shape[0], batch)]
    return torch.cat(parts).double().numpy()  # (N, 64)


def _feature_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats = _features(images)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fd_digits(samples: ArrayLike, reference: ArrayLike) -> float:
    """Fréchet distance between digits classifier features of `samples` and `reference`.

    Both are (N, C, H, W) digit images in [-1, 1] at any resolution (N >= 2 each). Lower is
    better; 0 for identical sets. Compare figures computed with the same sample counts.
    """
    x, ref = _digit_images(samples, "samples"), _digit_images(reference, "reference")
    if x.shape[0] < 2 or ref.shape[0] < 2:
        raise ConfigError(f"fd_digits needs at least 2 images per set, got {x.shape[0]} and {ref.shape[0]}")
    return frechet_distance(*_feature_stats(x), *_feature_stats(ref))


def class_accuracy(samples: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of digit images (N, C, H, W) the shipped classifier assigns to `labels` (N,)."""
    x = _digit_images(samples, "samples")
    y = torch.as_tensor(_array(labels, "labels")).long().ravel()
    if y.shape[0] != x.shape[0]:
        raise ConfigError(f"samples and labels differ in count: {x.shape[0]} vs {y.shape[0]}")
    return _accuracy(_shipped_classifier(), x, y)


def video_quality(videos: ArrayLike, reference: ArrayLike) -> dict[str, float]:
    """Per-frame digit quality and frame-to-frame consistency of digit videos (N, C, T, H, W).

    `reference` is real videos (M, C, T, H, W), whose frames are pooled, or digit images
    (M, C, H, W). Returns fd_frame_mean / fd_frame_max (`fd_digits` of each frame index against
    the reference frames), class_consistency (fraction of consecutive frames the classifier
    gives the same class) and frame_delta / reference_frame_delta (mean absolute change between
    consecutive frames, of the videos and of the reference videos; 0 when reference is images).
    """
    v = torch.as_tensor(_array(videos, "videos"), dtype=torch.float32)
    ref = torch.as_tensor(_array(reference, "reference"), dtype=torch.float32)
    if v.dim() != 5 or v.shape[2] < 2:
        raise ConfigError(f"videos must be (N, C, T, H, W) with T >= 2, got shape {tuple(v.shape)}")
    ref_delta = 0.0
    if ref.dim() == 5:
        ref_delta = float((ref[:, :, 1:] - ref[:, :, :-1]).abs().mean())
        ref = ref.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (M*T, C, H, W)
    if ref.dim() != 4:
        raise ConfigError(
            f"reference must be videos (M, C, T, H, W) or images (M, C, H, W), got {tuple(ref.shape)}"
        )
    n, c, t, h, w = v.shape
    ref_stats = _feature_stats(ref)
    frames = v.permute(0, 2, 1, 3, 4)  # (N, T, C, H, W)
    fds = [frechet_distance(*_feature_stats(frames[:, k]), *ref_stats) for k in range(t)]
    with torch.no_grad():
        classes = _shipped_classifier()(frames.flatten(0, 1)).argmax(-1).view(n, t)  # (N, T)
    return {
        "fd_frame_mean": float(np.mean(fds)),
        "fd_frame_max": float(np.max(fds)),
        "class_consistency": float((classes[:, 1:] == classes[:, :-1]).double().mean()),
        "frame_delta": float((v[:, :, 1:] - v[:, :, :-1]).abs().mean()),
        "reference_frame_delta": ref_delta,
    }
