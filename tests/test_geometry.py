"""Boxes, chunk grids and index normalisation (layer 1)."""

import itertools

import pytest
from hypothesis import given, strategies as st

from volbridge.geometry import Box, ChunkGrid, normalize_index
from volbridge.geometry.index import AxisSpec

ints = st.integers(-50, 50)


@st.composite
def boxes(draw):
    start = tuple(draw(ints) for _ in range(3))
    return Box(start, tuple(s + draw(st.integers(0, 30)) for s in start))


@given(boxes(), boxes())
def test_intersect_and_contains(a, b):
    i = a.intersect(b)
    pts = lambda bx: set(itertools.product(*(range(s, e) for s, e in zip(bx.start, bx.stop))))
    assert pts(i) == pts(a) & pts(b)
    assert a.contains(i) and b.contains(i)
    assert a.contains(b) == (pts(b) <= pts(a))


@given(
    bounds=boxes(),
    req=boxes(),
    chunk=st.tuples(*(st.integers(1, 7),) * 3),
    origin_shift=st.tuples(*(st.integers(-9, 9),) * 3),
)
def test_grid_cells_tile_the_request_exactly(bounds, req, chunk, origin_shift):
    origin = tuple(s + d for s, d in zip(bounds.start, origin_shift))
    grid = ChunkGrid(bounds, chunk, origin)
    cells = list(grid.cells(req))
    covered = [c.box.intersect(req) for c in cells]
    # Disjoint cover of the request clipped to the bounds, each cell aligned to the grid.
    assert sum(c.size for c in covered) == req.intersect(bounds).size
    for c in cells:
        full = grid.cell_box(c.index)
        assert full.shape == chunk and c.box == full.intersect(bounds) and not c.box.empty
        assert all((s - o) % k == 0 for s, o, k in zip(full.start, origin, chunk))
    assert len({c.index for c in cells}) == len(cells)


def test_grid_cells_run_x_fastest_and_a_0d_grid_has_one_cell():
    grid = ChunkGrid(Box((-3, 0, 2), (9, 8, 9)), (4, 4, 4), (-3, 0, 2))
    order = [c.index for c in grid.cells(Box((-10, -10, -10), (20, 20, 20)))]
    assert order == [(x, y, z) for z in range(2) for y in range(2) for x in range(3)]
    assert [(c.index, c.box) for c in ChunkGrid(Box((), ()), (), ()).cells(Box((), ()))] == [((), Box((), ()))]


def test_grid_negative_offsets():
    grid = ChunkGrid(Box((-5, 0, 0), (70, 10, 10)), (64, 64, 64), (-5, 0, 0))
    assert [c.box for c in grid.cells(Box((-100, 0, 0), (100, 5, 5)))] == [
        Box((-5, 0, 0), (59, 10, 10)),
        Box((59, 0, 0), (70, 10, 10)),
    ]
    assert grid.grid_shape() == (2, 1, 1)


AX = [AxisSpec(-10, 10), AxisSpec(0, 5), AxisSpec(3, 8)]


def sel(plan):
    return [(a.start, a.stop, a.step, a.drop) for a in plan.axes]


def test_index_absolute_and_open_ends():
    assert sel(normalize_index((slice(-5, None), slice(None, 2), 4), AX)) == [
        (-5, 10, 1, False), (0, 2, 1, False), (4, 5, 1, True)]
    # negative numbers are coordinates, not "from the end"
    assert sel(normalize_index(-3, AX))[0] == (-3, -2, 1, True)
    assert sel(normalize_index((..., 7), AX)) == [(-10, 10, 1, False), (0, 5, 1, False), (7, 8, 1, True)]
    assert sel(normalize_index((slice(5, 2),), AX))[0] == (5, 5, 1, False)  # empty, not reversed
    assert sel(normalize_index((slice(0, 9, 2),), AX))[0] == (0, 9, 2, False)


def test_index_channel_axis_is_numpy_like():
    axes = [AxisSpec(0, 3, is_channel=True), *AX]
    assert sel(normalize_index(-1, axes))[0] == (2, 3, 1, True)
    assert sel(normalize_index(slice(-2, None), axes))[0] == (1, 3, 1, False)
    with pytest.raises(IndexError, match="out of range for 3 channels"):
        normalize_index(3, axes)


@pytest.mark.parametrize("bad", [(..., ...), (0, 0, 0, 0), (None,), (slice(0, 4, 0),), ([1],), (1.5,), (True,)])
def test_index_errors(bad):
    with pytest.raises(IndexError):
        normalize_index(bad, AX)


@given(st.lists(st.integers(-10**6, 10**6), min_size=3, max_size=3), st.lists(st.integers(0, 5000), min_size=3, max_size=3),
       st.lists(st.integers(1, 9), min_size=3, max_size=3))
def test_a_reduced_box_covers_its_voxels_at_the_coarser_scale(start, shape, factor):
    import math

    box = Box.from_shape(shape, start)
    r = box.reduced(factor)
    assert r.start == tuple(math.floor(a / k) for a, k in zip(box.start, factor))
    assert r.stop == tuple(math.ceil(b / k) for b, k in zip(box.stop, factor))
    # every voxel of the box lies in a coarse voxel of the reduced box, and every coarse voxel holds one
    assert all(r.start[i] * factor[i] <= box.start[i] and box.stop[i] <= r.stop[i] * factor[i] for i in range(3))
    assert all(box.empty or (r.stop[i] - 1) * factor[i] < box.stop[i] for i in range(3))
