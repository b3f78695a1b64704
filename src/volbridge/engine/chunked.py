"""Reads and writes of any box over a chunked format in a key-value store.

Reads allocate the output once, then fetch, decode and copy each chunk's part straight into it:
a group of chunks per native call where the format allows (:mod:`.grouped`; over a network,
compressed chunks in batches as they arrive), else chunk by chunk; inside the bounds the output starts uninitialised and absent chunks are filled
where they are found (a box reaching outside the bounds starts filled). Writes
validate everything first, then per chunk either encode and replace the object (the chunk is
wholly covered) or read-modify-write it (partly covered) through the store's atomic ``update``.
"""

from __future__ import annotations


import numpy as np

from ..environment import number
from ..errors import (
    ChunkDecodeError,
    ChunkEncodeError,
    DTypeError,
    MetadataError,
    ReadOnlyError,
    ShapeError,
    UnsupportedError,
    VolbridgeError,
)
from ..formats.base import ChunkedDataset, ScaleLayout
from ..geometry import Box, Cell, ChunkGrid
from ..kv import KVStore
from . import place
from .grouped import group_codec, read_arriving, read_grouped
from .parallel import ahead, alongside, encode_slots, encoder_threads, encoders, run_bounded
from .sharded import read_sharded, write_sharded
from .volume import Volume


#: Decoded chunks bigger than this are refused (``VOLBRIDGE_MAX_CHUNK_BYTES`` changes it): the
#: engine holds whole decoded chunks, several at a time, so metadata naming chunks of terabytes
#: (damaged or hostile) would otherwise end in a MemoryError or a failed buffer size far inside.
MAX_CHUNK_BYTES = 2**31


#: Chunks of at least this many bytes (decoded) that go to a network store are compressed on the
#: process's encoder threads; smaller ones in the writing loops (see :func:`.parallel.encoders`:
#: 32^3 uint8 chunks, handed over, cost a write of 512 of them 38 ms more client CPU).
ENCODER_MIN_BYTES = 128 << 10


def _max_chunk_bytes() -> int:
    return number("VOLBRIDGE_MAX_CHUNK_BYTES", MAX_CHUNK_BYTES, least=1)


def _largest_chunk(layout: ScaleLayout) -> tuple[tuple[int, ...], int]:
    """The (x, y, z, c) shape a chunk of ``layout`` is stored in at most, and its bytes decoded:
    clipped to the bounds where the format clips edge chunks (a precomputed scale may name chunks
    far bigger than itself), the whole chunk where it pads them (zarr)."""
    grid = layout.grid
    cell = np.array([[min(c, n) for c, n in zip(grid.chunk_shape, grid.bounds.shape)]], np.int64)
    shape = tuple(int(n) for n in layout.stored_shapes(cell)[0])
    nbytes = layout.dtype.itemsize
    for n in shape:
        nbytes *= n
    return shape, nbytes


def _uninitialised(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read's output that the engine will write every voxel of (tests fill it with a pattern
    to prove that)."""
    return np.empty(shape, dtype=dtype, order="F")


class ChunkedVolume(Volume):
    def __init__(self, store: KVStore, dataset: ChunkedDataset, *, url: str | None = None, writable: bool = False):
        self.store = store
        self.dataset = dataset
        self.meta = dataset.meta
        self.format_name = dataset.format_name
        self.url = url or store.url
        self.capabilities = frozenset({"write"} if writable else ())
        self._largest: dict[int, tuple] = {}  # id(layout) -> (layout, [(part, largest chunk shape, its bytes)])

    def metadata_json(self) -> dict:
        return self.dataset.metadata_json()

    def instance_id(self, stamp: bool) -> str | None:
        from .identity import document_instance
        return document_instance(self.store, *self.dataset.instance_location, stamp and "write" in self.capabilities,
                                 self.dataset.version_key)

    def grid(self, scale: int = 0):
        return self.dataset.layout(scale).grid

    def write_grid(self, scale: int = 0):
        layout = self.dataset.layout(scale)
        block = layout.sharding.block_shape() if layout.sharding is not None else None
        if block is None:
            return layout.grid
        g = layout.grid
        return ChunkGrid(g.bounds, tuple(c * b for c, b in zip(g.chunk_shape, block)), g.origin)

    def add_scale(self, factor) -> None:
        """Append a scale ``factor`` (x, y, z) coarser than the last, where the format has scales."""
        add = getattr(self.dataset, "add_scale", None)
        if add is None:
            raise UnsupportedError(f"volbridge cannot add scales to a {self.format_name} volume ({self.url}) yet")
        if "write" not in self.capabilities:
            raise ReadOnlyError(f"{self.url} is open read-only; adding a scale writes its metadata (mode='r+')")
        add(factor)
        self.meta = self.dataset.meta

    def _layout(self, scale: int) -> ScaleLayout:
        """Scale ``scale``'s layout, for reading or writing voxels: its chunks must fit in memory."""
        layout = self.dataset.layout(scale)
        known = self._largest.get(id(layout))
        if known is None or known[0] is not layout:  # worked out once per layout (20-40 us)
            parts = [part for _, part in layout.channel_parts or [(None, layout)]]  # chunks of some channels each
            known = self._largest[id(layout)] = (layout, [(part, *_largest_chunk(part)) for part in parts])
        limit = _max_chunk_bytes()
        for part, shape, nbytes in known[1]:
            if nbytes > limit:
                raise MetadataError(
                    f"{self.url} scale {scale}: its metadata gives chunks of {' x '.join(map(str, shape[:3]))} voxels "
                    f"(x, y, z) x {shape[3]} channel(s) of {part.dtype}, {nbytes / 2**30:.3g} GiB each decoded; volbridge "
                    f"holds whole chunks in memory and refuses chunks over {limit / 2**30:.3g} GiB "
                    "(VOLBRIDGE_MAX_CHUNK_BYTES changes that)")
        return layout

    def _chunk_nbytes(self, layout: ScaleLayout) -> int:
        n = 1
        for c in layout.grid.chunk_shape:
            n *= c
        # decoded chunk + stored bytes + a decompression buffer
        return 3 * n * layout.num_channels * layout.dtype.itemsize

    # -- reading ----------------------------------------------------------------------------------
    def _fetch(self, layout: ScaleLayout, cell: Cell, skip: str | None = None) -> tuple[str, bytes] | None:
        """(key, stored bytes) of the cell, or None when absent; ``skip`` is a key known to be
        absent. The bytes may be a per-thread buffer: use them before this thread fetches again."""
        keys = layout.read_keys(cell)
        return self.store.get_first([k for k in keys if k != skip] if skip else keys, transient=True)

    def _fetch_decode(self, layout: ScaleLayout, cell: Cell, skip: str | None = None) -> tuple[str, np.ndarray] | None:
        """(key, voxels) of the cell, or None when absent (the voxels may view a per-thread buffer)."""
        found = self._fetch(layout, cell, skip)
        if found is None:
            return None
        key, data = found
        try:
            return key, layout.decode(data, cell, key)
        except ChunkDecodeError as e:
            raise ChunkDecodeError(f"chunk {key!r} in {self.store.url}: {e}") from e

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        layout = self._layout(scale)
        shape = (*box.shape, layout.num_channels)
        fill = 0 if layout.fill_value is None else layout.fill_value
        # Inside the bounds every voxel lies in one chunk, which the engine either places or
        # (absent) fills, so the output is not filled first: that pass, on this thread before
        # any parallel work, cost 10-15 % of a 300^3 sharded cutout (measured).
        inside = layout.grid.bounds.contains(box)
        if inside:
            out = _uninitialised(shape, layout.dtype)
        elif not any(np.asarray(fill, layout.dtype).tobytes()):  # all-zero bits (not -0.0)
            out = np.zeros(shape, dtype=layout.dtype, order="F")
        else:
            out = np.full(shape, fill, dtype=layout.dtype, order="F")
        self._read_layout(layout, box, out, fill if inside else None)
        return out

    def read_into(self, box: Box, out: np.ndarray, scale: int = 0) -> None:
        layout = self._layout(scale)
        if out.shape != (*box.shape, layout.num_channels):
            raise ShapeError(f"read_into box {box} of scale {scale} of {self.url} needs an array of shape "
                             f"{(*box.shape, layout.num_channels)} (x, y, z, c), got {out.shape}")
        if out.dtype != layout.dtype:
            raise DTypeError(f"scale {scale} of {self.url} holds {layout.dtype}; read_into got an array of {out.dtype}")
        if not out.flags.writeable:
            raise ShapeError(f"read_into box {box} of scale {scale} of {self.url} got a read-only array")
        fill = 0 if layout.fill_value is None else layout.fill_value
        inside = layout.grid.bounds.contains(box)
        if not inside:
            out[...] = fill
        self._read_layout(layout, box, out, fill if inside else None)

    def _read_layout(self, layout: ScaleLayout, box: Box, out: np.ndarray, fill) -> None:
        for sl, part in layout.channel_parts or [(slice(None), layout)]:
            self._read_into(part, box, out[..., sl], fill)

    def _read_into(self, layout: ScaleLayout, box: Box, out: np.ndarray, fill=None) -> None:
        """Read the box's voxels into ``out``: already the fill value (``fill`` None), or
        uninitialised, when every region no chunk covers (absent chunks) is set to ``fill``."""
        if layout.sharding is not None:
            read_sharded(self, layout, box, out, fill)
            return

        cells = list(layout.grid.cells(box))
        # The compiled copy loop pays off for short rows: numpy's strided assignment costs ~20 ns a
        # row, which 32-byte rows feel and 64-byte ones do not (measured equal per 64^3 chunk,
        # and the loop's per-call setup then costs more).
        # Without the loop loaded, numpy's assignment from the decoded view is the cheaper path.
        batched = (layout.decodes_to_bytes and layout.grid.chunk_shape[0] * layout.dtype.itemsize < 64
                   and place.prepare(len(cells)))

        def place_found(cell: Cell, found: tuple[str, bytes | memoryview] | None) -> None:
            """Copy the cell's stored bytes (or the fill, absent) into its part of ``out``."""
            if found is None:  # absent chunk inside the bounds: sparse data
                if fill is not None:
                    out[cell.box.intersect(box).slices(box.start)] = fill
                return
            key, data = found
            try:
                if not batched:
                    region = cell.box.intersect(box)
                    out[region.slices(box.start)] = layout.decode(data, cell, key)[region.slices(cell.box.start)]
                    return
                data, shape = layout.decode_bytes(data, cell.box.shape, key)
            except ChunkDecodeError as e:
                raise ChunkDecodeError(f"chunk {key!r} in {self.store.url}: {e}") from e
            lo = [max(a, b) for a, b in zip(cell.box.start, box.start)]
            size = [min(a, b) - c for a, b, c in zip(cell.box.stop, box.stop, lo)]
            place.place_one(out, data, shape, [a - c for a, c in zip(lo, cell.box.start)],
                            [a - b for a, b in zip(lo, box.start)], size)

        codec = group_codec(layout, len(cells))  # else chunk by chunk
        if self.store.io_concurrency is None:  # local: a group of chunks at a time
            if codec:
                read_grouped(self, layout, box, cells, out, codec, place_found)
            else:
                run_bounded(lambda cell: place_found(cell, self._fetch(layout, cell)), cells, self._chunk_nbytes(layout))
                place.load_soon()  # for the reads after this one
            return
        if codec and codec != "raw":  # over a network, compressed chunks in batches as they arrive
            # (raw chunks measured no faster in batches: placing one costs little either way)
            read_arriving(self, layout, box, cells, out, codec, place_found)
            return
        place.load_soon()
        # A network store fetches the whole list its own way (many requests in flight from one
        # thread, where it can) and hands over each chunk as it arrives.
        by_key = {layout.read_keys(cell)[0]: cell for cell in cells}
        other_names = bool(cells) and len(layout.read_keys(cells[0])) > 1  # the same for every cell

        def arrived(key: str, data: bytes | memoryview | None) -> None:
            cell = by_key[key]
            if data is None and other_names:  # maybe under another of its names
                place_found(cell, self._fetch(layout, cell, skip=key))
            else:
                place_found(cell, None if data is None else (key, data))

        self.store.fetch_each(list(by_key), arrived, heavy=not layout.voxels_stored_raw, nbytes=self._chunk_nbytes(layout))

    # -- writing ----------------------------------------------------------------------------------
    def _encode(self, layout: ScaleLayout, chunk, cell: Cell, key: str, *, voxel_bytes: bool = False) -> bytes:
        """Stored bytes of ``chunk``: an array, or (``voxel_bytes``) the bytes ScaleLayout.encode_bytes takes."""
        try:
            return layout.encode_bytes(chunk, cell) if voxel_bytes else layout.encode(chunk, cell)
        except VolbridgeError:
            raise
        except Exception as e:  # a codec library's own exception type
            raise ChunkEncodeError(f"cannot encode chunk {key!r} for {self.store.url}: {e}") from e

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        if "write" not in self.capabilities:
            raise ReadOnlyError(f"{self.url} is open read-only; open it with mode='r+' to write")
        self.check_write(box, data, scale, channels)
        layout = self._layout(scale)
        ch = channels if channels is not None else slice(None)
        if layout.channel_parts:
            selected = range(layout.num_channels)[ch]
            for sl, part in layout.channel_parts:
                # the selected channels inside this part, and where they sit in ``data``
                pos = [i for i, c in enumerate(selected) if sl.start <= c < sl.stop]
                if pos:
                    first, last, step = selected[pos[0]] - sl.start, selected[pos[-1]] - sl.start, selected.step
                    stop = last + (1 if step > 0 else -1)
                    local = slice(first, None if stop < 0 else stop, step)
                    self._write_layout(part, box, data[..., pos[0]:pos[-1] + 1], local)
            return
        self._write_layout(layout, box, data, ch)

    def _write_layout(self, layout: ScaleLayout, box: Box, data: np.ndarray, ch: slice) -> None:
        # all channels in their order: a reversed slice selects them all but must go through the
        # partial path, which applies it
        all_channels = range(layout.num_channels)[ch] == range(layout.num_channels)

        if layout.sharding is not None:
            write_sharded(self, layout, box, data, ch, all_channels)
            return
        enc = layout.content_encoding
        cells = list(layout.grid.cells(box))
        # A network store runs io_concurrency (32) loops so that PUTs overlap, and compresses
        # meanwhile on the process's encoder threads (large chunks) or in the loops, a few at a
        # time (small ones): see parallel.encoders. Raw chunks encode as a copy, and a local
        # store's loops are the cores' already: both encode in the loop. So does a write of no
        # more chunks than the encoders have threads (a relay's request): on them it would wait
        # behind the chunks a bulk write has queued (one chunk: 23 -> 32-39 ms, measured).
        large = (not layout.voxels_stored_raw and len(cells) > encoder_threads()
                 and _largest_chunk(layout)[1] >= ENCODER_MIN_BYTES)
        if layout.voxels_stored_raw or self.store.io_concurrency is None:
            encode = self._encode
        else:
            slots = encode_slots()
            encoder = encoders() if large else None

            def encode(*args):
                if encoder is not None:
                    try:
                        done = encoder.submit(self._encode, *args)
                    except RuntimeError:  # the interpreter is shutting down: executors take no new work
                        pass
                    else:
                        return done.result()
                with slots:
                    return self._encode(*args)

        def task(cell: Cell) -> None:
            region = cell.box.intersect(box)
            src = data[region.slices(box.start)]
            wkey = layout.write_key(cell)
            if region == cell.box and all_channels:
                encoded = encode(layout, src, cell, wkey)
                self.store.update(wkey, lambda _old: encoded, needs_old=False, content_encoding=enc)
                return
            moved_from: list[str] = []

            def merge(old: bytes | None) -> bytes:  # runs again when a conditional write loses a race
                moved_from.clear()
                chunk = None
                if old is not None:
                    chunk = layout.decode(old, cell, wkey)
                else:  # maybe under another of the format's names (e.g. a deep-layout path)
                    found = self._fetch_decode(layout, cell, skip=wkey)
                    if found is not None:
                        moved_from.append(found[0])
                        chunk = found[1]
                if chunk is None:
                    fill = 0 if layout.fill_value is None else layout.fill_value
                    chunk = np.full((*cell.box.shape, layout.num_channels), fill, layout.dtype, order="F")
                else:
                    chunk = np.array(chunk, order="F", copy=True)
                chunk[region.slices(cell.box.start) + (ch,)] = src
                return encode(layout, chunk, cell, wkey)

            try:
                self.store.update(wkey, merge, content_encoding=enc)
            except ChunkDecodeError as e:
                raise ChunkDecodeError(
                    f"cannot update chunk {wkey!r} in {self.store.url}: its stored bytes are corrupt ({e}); nothing was written to it"
                ) from e
            # The old copy under another name is superseded now; a blind whole-chunk overwrite
            # skips this, since the write key is always read first and shadows it.
            self.store.delete_many(moved_from)

        nbytes = self._chunk_nbytes(layout)
        if not (self.store.batched_puts and all_channels):
            run_bounded(task, cells, nbytes, self.store.io_concurrency)
            return
        # A store that drives many PUTs from one thread gets every wholly covered chunk at once
        # (see KVStore.put_each); the partly covered ones are read-modified-written meanwhile.
        whole, partial = [], []
        for cell in cells:
            (whole if box.contains(cell.box) else partial).append(cell)
        if whole and partial:
            nbytes *= 2  # each half of the write gets half the bound on bytes in flight
        halves = [lambda: self._put_whole(layout, box, data, whole, enc, large, nbytes)] if whole else []
        if partial:
            halves.append(lambda: run_bounded(task, partial, nbytes, self.store.io_concurrency))
        if halves:  # (an empty selection writes nothing)
            alongside(*halves)

    def _put_whole(self, layout: ScaleLayout, box: Box, data: np.ndarray, cells: list[Cell], enc: str | None,
                   large: bool, nbytes: int) -> None:
        """Replace the chunks of ``cells``, each wholly inside ``box``, through ``put_each``: each
        encoded when the store takes it, large compressed ones a few ahead on the encoders."""
        keys = [layout.write_key(cell) for cell in cells]

        def make(item: tuple[Cell, str]) -> bytes:
            cell, key = item
            return self._encode(layout, data[cell.box.slices(box.start)], cell, key)

        values = ahead(make, zip(cells, keys)) if large else map(make, zip(cells, keys))
        self.store.put_each(keys, values, content_encoding=enc, nbytes=nbytes)
