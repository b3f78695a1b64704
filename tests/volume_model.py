"""A numpy model of a volume, for comparing against any volbridge remote in tests.

Holds each scale as a full (x, y, z, c) array over its bounds; reads outside are zeros.
"""

from __future__ import annotations

import numpy as np

from volbridge.geometry import Box


class VolumeModel:
    def __init__(self, scales: list[Box], dtype, num_channels: int):
        self.scales = scales
        self.data = [np.zeros((*b.shape, num_channels), dtype=dtype) for b in scales]

    def read(self, scale: int, box: Box) -> np.ndarray:
        bounds = self.scales[scale]
        out = np.zeros((*box.shape, self.data[scale].shape[3]), dtype=self.data[scale].dtype)
        inter = box.intersect(bounds)
        if not inter.empty:
            out[inter.slices(box.start)] = self.data[scale][inter.slices(bounds.start)]
        return out

    def write(self, scale: int, box: Box, values: np.ndarray, channels=slice(None)) -> None:
        self.data[scale][box.slices(self.scales[scale].start) + (channels,)] = values


def user_index(box: Box, axis_order: str, channel=None, has_channel_axis: bool = False):
    """The index tuple selecting an (x, y, z) box in a handle of the given axis order.

    ``channel`` selects one channel (an int); otherwise all channels are kept when the handle
    has a channel axis.
    """
    if channel is None and has_channel_axis:
        channel = slice(None)
    sl = [slice(a, b) for a, b in zip(box.start, box.stop)]
    if axis_order == "zyx":
        sl = sl[::-1]
        return tuple(([channel] if channel is not None else []) + sl)
    return tuple(sl + ([channel] if channel is not None else []))


def to_user(xyzc: np.ndarray, axis_order: str, has_channel_axis: bool) -> np.ndarray:
    """An (x, y, z, c) array in the layout a handle returns."""
    a = xyzc if has_channel_axis else xyzc[..., 0]
    return a.T if axis_order == "zyx" else a


def patch_and_check(v, r, shape: tuple[int, ...], dtype, rng: np.random.Generator, writes: int, patch: int) -> None:
    """Write ``writes`` random patches (edges up to ``patch``) of random values through ``v``
    (zyx, from 0), so that most chunks stay absent; then read everything and three random boxes,
    some reaching past the bounds on either side, through ``r`` (opened after the writes by
    the caller's ``r()``) and compare them with a numpy model (absent and outside: 0)."""
    model = np.zeros(shape, dtype)
    top = np.iinfo(dtype).max
    for _ in range(writes):
        lo = [int(rng.integers(0, n - 1)) for n in shape]
        hi = [int(rng.integers(a + 1, min(n, a + patch) + 1)) for a, n in zip(lo, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        model[box] = rng.integers(0, top, [b - a for a, b in zip(lo, hi)], dtype=dtype, endpoint=True)
        v[box] = model[box]
    arr = r()
    np.testing.assert_array_equal(arr[...], model)
    for _ in range(3):
        lo = [int(rng.integers(-3, n)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 4)) for a, n in zip(lo, shape)]
        want = np.zeros([b - a for a, b in zip(lo, hi)], dtype)
        inside = tuple(slice(max(a, 0), max(min(b, n), a, 0)) for a, b, n in zip(lo, hi, shape))
        want[tuple(slice(s.start - a, s.stop - a) for s, a in zip(inside, lo))] = model[inside]
        np.testing.assert_array_equal(arr[tuple(slice(a, b) for a, b in zip(lo, hi))], want)


def stored_files(root) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, for comparing two volumes written alike: their
    provenance (times, host) and instance ids (random per volume) left out of the metadata."""
    import json
    from pathlib import Path

    from volbridge.engine.identity import INSTANCE_KEY

    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or ".volbridge-locks" in p.parts or p.name == "provenance":
            continue
        data = p.read_bytes()
        if p.name in ("zarr.json", ".zattrs", "attributes.json", "info"):
            doc = json.loads(data)
            for attrs in (doc, doc.get("attributes") or {}):
                attrs.pop("volbridge_provenance", None)
                attrs.pop(INSTANCE_KEY, None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[str(p.relative_to(root))] = data
    return out
