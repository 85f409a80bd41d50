import itertools

import pytest
import torch

from optkit.errors import ConfigError
from optkit.nn.review_tokens import ReviewTokens
from optkit.nn.rotary_scan import (
    MAJOR_ORDERS,
    inverse_rotary_major_scan,
    major_order,
    rotary_major_scan,
    scan_permutation,
    scanned_grid,
)

GRIDS = [(2, 3, 4), (4, 8, 8), (1, 5, 2)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("thw")])
def test_round_trip(grid: tuple[int, int, int], order: str) -> None:
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 5)
    scanned = rotary_major_scan(x, grid, order)
    assert scanned.shape == x.shape
    torch.testing.assert_close(inverse_rotary_major_scan(scanned, grid, order), x, rtol=0, atol=0)
    perm = scan_permutation(grid, order)
    assert sorted(perm.tolist()) == list(range(x.shape[1]))  # a permutation
    torch.testing.assert_close(scanned, x[:, perm], rtol=0, atol=0)


def test_orders_differ_and_rotate_over_layers() -> None:
    grid = (2, 3, 4)
    perms = [tuple(scan_permutation(grid, o).tolist()) for o in MAJOR_ORDERS]
    assert len(set(perms)) == 3
    assert perms[0] == tuple(range(24))  # T-major is the storage order
    assert [major_order(i) for i in range(6)] == list(MAJOR_ORDERS) * 2


@pytest.mark.parametrize("order", MAJOR_ORDERS)
def test_innermost_axis_is_adjacent_in_sequence(order: str) -> None:
    grid = (3, 4, 5)
    perm = scan_permutation(grid, order)
    t, rest = perm // 20, perm % 20
    coords = torch.stack([t, rest // 5, rest % 5], dim=1)  # (N, 3) as (t, h, w)
    inner = "thw".index(order[-1])
    steps = coords[1:] - coords[:-1]
    size = scanned_grid(grid, order)[-1]
    # inside a run of the innermost axis, consecutive tokens are grid neighbours along it
    within = torch.arange(1, perm.numel()) % size != 0
    assert torch.all(steps[within, inner] == 1)
    assert torch.all(steps[within].abs().sum(dim=1) == 1)


def test_scan_errors() -> None:
    with pytest.raises(ConfigError, match="permutation"):
        rotary_major_scan(torch.randn(1, 24, 2), (2, 3, 4), "tth")
    with pytest.raises(ConfigError, match="tokens"):
        rotary_major_scan(torch.randn(1, 23, 2), (2, 3, 4), "thw")
    with pytest.raises(ConfigError):
        major_order(-1)


def test_review_tokens_insert_remove() -> None:
    torch.manual_seed(0)
    review = ReviewTokens(dim=6, num_tokens=2)
    x = torch.randn(3, 12, 6)
    inserted = review.insert(x, period=4)
    assert inserted.shape == (3, 12 + 3 * 2, 6)
    # each group is [r0, r1, 4 sequence tokens]; review tokens = learned + summary of the mean
    groups = inserted.reshape(3, 3, 6, 6)
    torch.testing.assert_close(groups[:, :, 2:].reshape(3, 12, 6), x)
    expected = review.tokens + review.summary(x.mean(dim=1, keepdim=True))  # (3, 2, 6)
    for g in range(3):
        torch.testing.assert_close(groups[:, g, :2], expected)
    torch.testing.assert_close(review.remove(inserted, period=4), x, rtol=0, atol=0)


def test_review_tokens_none_and_errors() -> None:
    x = torch.randn(1, 12, 6)
    assert ReviewTokens(6, 0).insert(x, 4) is x
    with pytest.raises(ConfigError, match="multiple"):
        ReviewTokens(6, 2).insert(x, 5)
    with pytest.raises(ConfigError):
        ReviewTokens(6, -1)
