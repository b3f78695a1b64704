"""neuroglancer ``compressed_segmentation`` for uint32 and uint64 labels, any block size.

Written here in vectorised numpy rather than taken from the ``compressed-segmentation`` package,
because that package crashes the interpreter (segfault) on 4-D input and on corrupt streams, and
a corrupt chunk must raise an error that names it, not kill the process. Every offset is checked
before it is followed.

Layout (per channel, in 32-bit little-endian words): one 2-word header per block
(``lut_offset | bits << 24``, ``values_offset``), then per block the packed indices and the lookup
table. A multi-channel wrapper of ``num_channels`` word offsets always comes first.
"""

from __future__ import annotations

import numpy as np

from ..errors import ChunkDecodeError
from .base import ChunkCodec, Shape4

_BITS = np.array([0, 1, 2, 4, 8, 16, 32])


class CompressedSegmentationCodec(ChunkCodec):
    name = "compressed_segmentation"

    def __init__(self, block_size: tuple[int, int, int] = (8, 8, 8)):
        if len(block_size) != 3 or any(int(b) <= 0 for b in block_size):
            raise ValueError(f"compressed_segmentation block size must be 3 positive ints, got {block_size}")
        self.block_size = tuple(int(b) for b in block_size)

    # -- decode -------------------------------------------------------------------------------
    def decode(self, data: bytes, shape: Shape4, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.name not in ("uint32", "uint64"):
            raise ChunkDecodeError(f"compressed_segmentation holds uint32/uint64, not {dtype.name}")
        if len(data) % 4:
            raise ChunkDecodeError(f"compressed_segmentation stream of {len(data)} bytes is not whole words")
        words = np.frombuffer(data, dtype="<u4")
        nc = shape[3]
        if len(words) < nc:
            raise ChunkDecodeError(f"compressed_segmentation stream too short for {nc} channel offsets")
        offsets = words[:nc].astype(np.int64)
        ends = np.append(offsets[1:], len(words))
        if offsets[0] != nc or np.any(ends < offsets) or ends[-1] > len(words):
            raise ChunkDecodeError(f"compressed_segmentation channel offsets {offsets.tolist()} are invalid")
        out = np.empty(shape, dtype=dtype, order="F")
        for c in range(nc):
            out[..., c] = self._decode_channel(words[offsets[c] : ends[c]], shape[:3], dtype)
        return out

    def _decode_channel(self, words: np.ndarray, shape, dtype) -> np.ndarray:
        bx, by, bz = self.block_size
        gx, gy, gz = (-(-s // b) for s, b in zip(shape, self.block_size))
        nb, nvox = gx * gy * gz, bx * by * bz
        n = len(words)
        if n < 2 * nb:
            raise ChunkDecodeError(f"compressed_segmentation channel has {n} words, {2 * nb} needed for headers")
        head = words[: 2 * nb].reshape(nb, 2).astype(np.int64)
        lut_off = head[:, 0] & 0xFFFFFF
        bits = head[:, 0] >> 24
        val_off = head[:, 1]
        if not np.isin(bits, _BITS).all():
            raise ChunkDecodeError(f"compressed_segmentation block has invalid bit width {sorted(set(bits.tolist()) - set(_BITS.tolist()))}")
        wide = dtype.itemsize // 4
        blocks = np.empty((nb, nvox), dtype=dtype)
        pos = np.arange(nvox, dtype=np.int64)
        for b in np.unique(bits):
            sel = np.flatnonzero(bits == b)
            if b == 0:
                idx = np.zeros((len(sel), nvox), dtype=np.int64)
            else:
                nwords = -(-(int(b) * nvox) // 32)
                if np.any(val_off[sel] + nwords > n):
                    raise ChunkDecodeError("compressed_segmentation encoded values point past the end")
                bitpos = int(b) * pos
                w = words[val_off[sel][:, None] + (bitpos >> 5)[None, :]].astype(np.int64)
                idx = (w >> (bitpos & 31)[None, :]) & ((1 << int(b)) - 1)
            need = lut_off[sel] + (idx.max(axis=1) + 1) * wide
            if np.any(need > n):
                raise ChunkDecodeError("compressed_segmentation lookup table points past the end")
            at = lut_off[sel][:, None] + idx * wide
            if wide == 1:
                blocks[sel] = words[at]
            else:
                blocks[sel] = words[at].astype(np.uint64) | (words[at + 1].astype(np.uint64) << np.uint64(32))
        vol = blocks.reshape(gz, gy, gx, bz, by, bx).transpose(0, 3, 1, 4, 2, 5)
        vol = vol.reshape(gz * bz, gy * by, gx * bx)[: shape[2], : shape[1], : shape[0]]
        return vol.T  # (x, y, z) view of the C-ordered (z, y, x) array

    # -- encode -------------------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> bytes:
        if chunk.dtype.name not in ("uint32", "uint64"):
            raise ChunkDecodeError(f"compressed_segmentation holds uint32/uint64, not {chunk.dtype.name}")
        nc = chunk.shape[3]
        parts = [self._encode_channel(chunk[..., c]) for c in range(nc)]
        header = np.cumsum([nc] + [len(p) for p in parts[:-1]]).astype("<u4")
        return header.tobytes() + b"".join(p.tobytes() for p in parts)

    def _encode_channel(self, vol: np.ndarray) -> np.ndarray:
        dtype = vol.dtype
        bx, by, bz = self.block_size
        sx, sy, sz = vol.shape
        gx, gy, gz = -(-sx // bx), -(-sy // by), -(-sz // bz)
        nb, nvox = gx * gy * gz, bx * by * bz
        zyx = vol.T  # (z, y, x)
        pad = ((0, gz * bz - sz), (0, gy * by - sy), (0, gx * bx - sx))
        if any(p[1] for p in pad):
            zyx = np.pad(zyx, pad, mode="edge")  # padded voxels repeat a value already in the block
        blocks = zyx.reshape(gz, bz, gy, by, gx, bx).transpose(0, 2, 4, 1, 3, 5).reshape(nb, nvox)

        order = np.argsort(blocks, axis=1, kind="stable")
        srt = np.take_along_axis(blocks, order, axis=1)
        new = np.ones((nb, nvox), dtype=bool)
        new[:, 1:] = srt[:, 1:] != srt[:, :-1]
        rank_sorted = np.cumsum(new, axis=1) - 1
        idx = np.empty_like(rank_sorted)
        np.put_along_axis(idx, order, rank_sorted, axis=1)
        counts = new.sum(axis=1)
        bits = _BITS[np.searchsorted(1 << _BITS, counts)]  # smallest width with 2**bits >= count
        bits[counts == 1] = 0
        val_words = -(-(bits * nvox) // 32)

        # Tables, de-duplicated across blocks as neuroglancer's encoder does.
        wide = dtype.itemsize // 4
        flat_tables = srt[new]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        table_at: dict[bytes, int] = {}
        lut_off = np.empty(nb, dtype=np.int64)
        val_off = np.empty(nb, dtype=np.int64)
        table_src = []  # (block, word offset) of each table written
        cursor = 2 * nb
        for i in range(nb):
            val_off[i] = cursor
            cursor += int(val_words[i])
            key = flat_tables[starts[i] : starts[i] + counts[i]].tobytes()
            at = table_at.get(key)
            if at is None:
                at = table_at[key] = cursor
                table_src.append((i, cursor))
                cursor += int(counts[i]) * wide
            lut_off[i] = at
        if cursor > 0xFFFFFF and lut_off.max() > 0xFFFFFF:
            raise ValueError("compressed_segmentation channel too large for 24-bit table offsets")

        out = np.zeros(cursor, dtype="<u4")
        out[0 : 2 * nb : 2] = lut_off | (bits.astype(np.int64) << 24)
        out[1 : 2 * nb : 2] = val_off
        for b in np.unique(bits):
            if b == 0:
                continue
            b = int(b)
            sel = np.flatnonzero(bits == b)
            per = 32 // b
            nwords = -(-nvox // per)
            v = np.zeros((len(sel), nwords * per), dtype=np.uint64)
            v[:, :nvox] = idx[sel]
            v = v.reshape(len(sel), nwords, per) << (np.arange(per, dtype=np.uint64) * np.uint64(b))
            packed = np.bitwise_or.reduce(v, axis=2).astype("<u4")
            out[val_off[sel][:, None] + np.arange(nwords)[None, :]] = packed
        for i, at in table_src:
            t = flat_tables[starts[i] : starts[i] + counts[i]]
            if wide == 1:
                out[at : at + counts[i]] = t
            else:
                out[at : at + 2 * counts[i]] = t.astype("<u8").view("<u4")
        return out
