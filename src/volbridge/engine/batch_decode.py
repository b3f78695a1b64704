"""Decompress many chunks into one buffer in one native call, with the GIL released.

A sharded zarr array of 32^3 zstd chunks holds 64 chunks in each 128^3 shard. Decoded one by one
through a Python binding, every chunk costs a fresh bytes object, a copy of it into the staging
buffer and ~10 us of Python around the (GIL-free) decompression, so two threads decoded a volume
only ~1.3x as fast as one. Here one compiled loop (:mod:`.native`) calls the C library for every chunk of a
shard straight into its slot of the staging buffer, holding no GIL for the whole shard:

* ``zstd``: libzstd's ``ZSTD_decompressDCtx``: the system's ``libzstd.so.1`` on x86-64 when it
  is 1.5.2 or later (its builds decode Huffman literals in hand-written assembly, which the pip
  builds of python-zstandard leave out: 4-9 % less CPU on 64^3 chunks, measured), else the build
  python-zstandard ships (its cffi module exports the C API), else any the system has;
* ``gzip``: libdeflate's ``libdeflate_gzip_decompress_ex``, from the build the ``deflate``
  package ships (the chunk-by-chunk path's own): with no output size pointer it accepts exactly
  the size asked, and a stream is taken only when its one gzip member is all of it.

Without the library or llvmlite the engine decodes chunk by chunk. Every chunk this loop cannot
decode into exactly its slot is left to that checked path, which decodes it or says what is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import compression
from . import native, place
from .parallel import run_bounded

# A child forked while a thread loads a codec finds its entry False already: it decodes that
# codec chunk by chunk rather than wait forever.
_lock = native.LoadLock()
_local = threading.local()


@dataclass
class _Codec:
    fn: int  # address of the one-shot decompression function
    new_context: object  # ctypes function: () -> context pointer
    free_context: object  # ctypes function: (pointer) -> None
    mode: int  # 0: zstd's calling convention, 1: libdeflate's
    #: int64 addresses of libzstd's ZSTD_decompressStream, ZSTD_DCtx_reset,
    #: ZSTD_getFrameContentSize and ZSTD_findFrameCompressedSize, for decoding a chunk's first bytes only
    #: (native._emit_decode); None for other codecs or without them
    stream: np.ndarray | None = None

    @property
    def stream_address(self) -> int:
        return 0 if self.stream is None else self.stream.ctypes.data


_kernel = None  # the compiled loop once loaded, False when it cannot run here
_codecs: dict[str, _Codec | bool] = {}  # name -> loaded codec, or False when unavailable here


def _library(name: str) -> tuple[ctypes.CDLL, str, str, str, int] | None:
    """(library, decompress, create context, free context, mode) for codec ``name``."""
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_size_t) != 8:
        return None  # the loop passes every argument as a 64-bit integer
    if name == "zstd":
        import zstandard

        names = ("ZSTD_decompressDCtx", "ZSTD_createDCtx", "ZSTD_freeDCtx")
        lib = _system_zstd(names) or compression.native_library(compression.files_next_to(zstandard, "_cffi*"), *names)
        if lib is None:  # only then: ctypes.util imports subprocess and runs ldconfig (~30 ms)
            from ctypes.util import find_library

            lib = compression.native_library([find_library("zstd")], *names)
        return None if lib is None else (lib, *names, 0)
    if name == "gzip":
        lib = compression.libdeflate()
        return None if lib is None else (lib, *compression.LIBDEFLATE_GZIP, 1)
    return None


#: The first libzstd whose x86-64 decoder has the assembly Huffman loop (1.5.2).
ZSTD_ASM_VERSION = 10502
#: The first libzstd with the stable ZSTD_DCtx_reset(ctx, directive) a prefix decode calls.
ZSTD_STREAM_VERSION = 10400


def _system_zstd(names: tuple[str, ...]) -> ctypes.CDLL | None:
    """The system's libzstd where it decodes faster than the bundled build: x86-64, 1.5.2 or later.
    Loaded by its soname (no ldconfig run). It may be an older version than python-zstandard's:
    a chunk it does not decode to exactly its size still goes to the checked path, which
    python-zstandard decodes (and which names a damaged chunk)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    # Its own calls bound to its own functions (RTLD_DEEPBIND): with python-zstandard's cffi
    # module loaded RTLD_GLOBAL, they had bound to that other build's (review).
    mode = ctypes.DEFAULT_MODE | getattr(os, "RTLD_DEEPBIND", 0)
    lib = compression.native_library(["libzstd.so.1"], "ZSTD_versionNumber", *names, mode=mode)
    if lib is None:
        return None
    lib.ZSTD_versionNumber.restype = ctypes.c_uint
    return lib if lib.ZSTD_versionNumber() >= ZSTD_ASM_VERSION else None


def _zstd_stream(lib: ctypes.CDLL) -> np.ndarray | None:
    """The addresses of ``lib``'s ZSTD_decompressStream, ZSTD_DCtx_reset,
    ZSTD_getFrameContentSize and ZSTD_findFrameCompressedSize, or None where it lacks them or
    is older than 1.4.0 (where ZSTD_DCtx_reset took other arguments)."""
    names = ("ZSTD_decompressStream", "ZSTD_DCtx_reset", "ZSTD_getFrameContentSize", "ZSTD_findFrameCompressedSize")
    try:
        version = lib.ZSTD_versionNumber
        version.restype = ctypes.c_uint
        if version() < ZSTD_STREAM_VERSION:
            return None
        return np.array([ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in names], np.int64)
    except AttributeError:
        return None


def load(name: str) -> bool:
    """Load the loop and codec ``name``'s library once per process; whether batched decoding of
    ``name`` runs here."""
    global _kernel
    with _lock:
        if name not in _codecs:
            _codecs[name] = False
            found = _library(name)
            if found is not None and _kernel is None:  # one loop serves every codec
                _kernel = native.loops() or False
            if found is not None and _kernel:
                lib, decompress, create, free, mode = found
                new_context, free_context = getattr(lib, create), getattr(lib, free)
                new_context.restype, free_context.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                fn = ctypes.cast(getattr(lib, decompress), ctypes.c_void_p).value
                _codecs[name] = _Codec(fn, new_context, free_context, mode, _zstd_stream(lib) if mode == 0 else None)
    return bool(_codecs[name])


class _Context:
    """A decompression context of one thread (contexts are not thread-safe), freed with it."""

    def __init__(self, codec: _Codec):
        self.free, self.ptr = codec.free_context, codec.new_context()
        if not self.ptr:
            raise MemoryError("the decompression library could not allocate a context")

    def __del__(self) -> None:
        self.free(self.ptr)


def _context(codec: _Codec) -> _Context:
    """This thread's context for ``codec``, keyed by its library function: a context belongs to
    one build of the library."""
    contexts = _local.__dict__.setdefault("contexts", {})
    ctx = contexts.get(codec.fn)
    if ctx is None:
        ctx = contexts[codec.fn] = _Context(codec)
    return ctx


def decoder(name: str) -> tuple[int, int, int, int]:
    """(mode, function address, this thread's context, streaming functions' address or 0) of
    codec ``name`` for a native loop (:func:`native._emit_decode`); only after :func:`load`
    returned True for ``name``."""
    codec = _codecs[name]
    return codec.mode, codec.fn, _context(codec).ptr, codec.stream_address


def decode_into(name: str, src, starts: np.ndarray, sizes: np.ndarray, dst: np.ndarray, offsets: np.ndarray,
                caps: np.ndarray, which: np.ndarray | None = None) -> int:
    """Decompress the ``name`` stream ``src[starts[k]:starts[k] + sizes[k]]`` into
    ``dst[offsets[k]:offsets[k] + caps[k]]`` for k = 0, 1, ..., in order (``src``, ``dst``: 1-D
    uint8; or ``src`` a :class:`native.Sources`, stream ``k`` then in buffer ``which[k]``).
    Returns how many chunks decoded to exactly their ``caps[k]`` bytes before the first that did
    not (corrupt, cut, or of another size): the caller decodes that one on its checked path,
    which says what is wrong. Only after :func:`load` returned True for ``name``."""
    codec = _codecs[name]
    starts, sizes, offsets, caps = (np.require(a, np.int64, ["C", "A"]) for a in (starts, sizes, offsets, caps))
    if not len(starts) == len(sizes) == len(offsets) == len(caps):
        raise ValueError(f"{name} batch spans of different counts")
    sources = src if isinstance(src, native.Sources) else native.Sources([src])
    # The loop runs without bounds checks or the GIL, and sees addresses only: every span must
    # lie inside its buffer (compared as differences: a sum could wrap around int64 and pass).
    at = sources.starts(np.zeros(len(starts), np.int64) if which is None else which, starts, sizes, f"{name} batch decoding")
    if not ((offsets >= 0).all() and (offsets <= dst.size).all() and (caps >= 0).all() and (caps <= dst.size - offsets).all()):
        raise ValueError(f"{name} batch spans outside their destination buffer")
    sources.check_destination(dst, f"{name} batch decoding")
    ctx = _context(codec)
    return _kernel.decode_all(codec.mode, codec.fn, ctx.ptr, 0, at.ctypes.data, sizes.ctypes.data, dst.ctypes.data,
                              offsets.ctypes.data, caps.ctypes.data, len(starts), 0, 0, caps.ctypes.data, 0, dst.size)


class CopyOut:
    """Where a read's decoded chunks go, worked out and checked once for the read: chunk ``r``'s
    voxels (stored shape ``shapes[r]``, x, y, z, c, in ``slot_sizes[r]`` bytes) put region
    ``size[r]`` at ``src_lo[r]`` at ``dst_lo[r]`` of ``out``. Where the compiled copy writes
    ``out`` (``fused``), each chunk is copied out by its row of a copy table right after its
    decode; else the chunks are decoded into a staging buffer and placed after."""

    def __init__(self, out: np.ndarray, shapes: np.ndarray, slot_sizes: np.ndarray, src_lo: np.ndarray,
                 dst_lo: np.ndarray, size: np.ndarray):
        self.out, self.shapes, self.src_lo, self.dst_lo, self.size = out, shapes, src_lo, dst_lo, size
        self.caps = np.ascontiguousarray(slot_sizes, np.int64)
        self.fused = place.writes_natively(out)
        if self.fused:
            self.table = place.copy_table(out, shapes, src_lo, dst_lo, size)
            self.flat = place.out_bytes(out)
            # every row reads inside its chunk's decoded bytes and writes inside ``out``
            ends = place.row_ends(self.table)
            if ends is None or not ((self.caps >= 0).all() and (ends[0] <= self.caps).all()
                                    and (ends[1] <= self.flat.size).all()):
                raise ValueError("chunk copies outside a decoded chunk or the output")
            #: bytes of each decoded chunk its row reads: a decoder may stop there
            self.needs = np.ascontiguousarray(ends[0], np.int64)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if len(rows) and not (rows.min() >= 0 and rows.max() < len(self.caps)):
            raise ValueError("chunk copies name rows that do not exist")
        return rows


class ChunkAtATime:
    """Decode chunks one at a time, as a network store hands them over, each straight from the
    buffer it arrived in, and copy each out by its row of ``copy`` (a fused one), with the
    checks done on Python integers. :func:`decode_and_place`'s numpy arrays and checks cost
    ~100 us a call, more than a 64^3 zstd chunk's decode: batching the chunks paid for it, but
    then each body had to be copied to wait for its batch, and was decoded cold. Decoded as
    it arrives, a 256^3 zstd read over S3 took 6-7 ms (~9 %) less client CPU, with the server
    on a core of its own. Only after :func:`load` returned True for ``name``."""

    def __init__(self, name: str, copy: CopyOut):
        if not copy.fused:
            raise ValueError("decoding chunk by chunk needs a fused copy table")
        native.Sources([]).check_destination(copy.flat, f"{name} decoding")  # writable, flat
        table = copy.table
        if not (table.ndim == 2 and table.flags.c_contiguous and table.dtype == np.int64 and len(table) == len(copy.caps)):
            raise ValueError("a copy table of the wrong layout")
        self.name, self.codec = name, _codecs[name]
        self.copy = copy  # keeps the table, caps, needs and output whose addresses follow alive
        self.rows, self.cap = len(copy.caps), int(copy.caps.max(initial=0))
        self.table, self.row_bytes = table.ctypes.data, table.strides[0]
        self.caps, self.needs = copy.caps.ctypes.data, copy.needs.ctypes.data
        self.out, self.out_end = copy.flat.ctypes.data, copy.flat.ctypes.data + copy.flat.size
        self.zero = np.zeros(1, np.int64)
        self.local = threading.local()

    def _thread_state(self) -> tuple[np.ndarray, _Context, np.ndarray | None]:
        """This thread's span (address, size), decompression context, and decode buffer for
        chunks too big for the thread's kept staging buffer (allocated and faulted in once per
        read, not once per chunk)."""
        state = getattr(self.local, "state", None)
        if state is None:
            big = np.empty(self.cap, np.uint8) if self.cap > place.KEEP_STAGING_BYTES else None
            state = self.local.state = (np.zeros(2, np.int64), _context(self.codec), big)
        return state

    def place(self, row: int, data: bytes | memoryview) -> bool:
        """Decode ``data`` (chunk ``row`` of ``copy``) and copy it out; False, with nothing
        written, when it does not decode to exactly its voxels: the caller's checked path then
        decodes it or says what is wrong. ``data`` is read only during the call."""
        if not 0 <= row < self.rows:
            raise ValueError(f"chunk row {row} of a read of {self.rows}")
        span, ctx, big = self._thread_state()
        src = np.frombuffer(data, np.uint8)
        at, size = src.ctypes.data, src.size
        with contextlib.nullcontext(big) if big is not None else place.staging(self.cap) as buf:
            dst = buf.ctypes.data
            # the loop moves bytes assuming distinct buffers and runs without bounds checks: the
            # span is the whole of ``data``; the row was checked inside ``out`` and the chunk
            if size and (at < self.out_end and self.out < at + size or at < dst + buf.size and dst < at + size):
                raise ValueError(f"{self.name} decoding from a buffer that overlaps its destination")
            span[0], span[1] = at, size
            spans, codec = span.ctypes.data, self.codec
            return _kernel.decode_all(codec.mode, codec.fn, ctx.ptr, 0, spans, spans + 8, dst, self.zero.ctypes.data,
                                      self.caps + 8 * row, 1, self.out, self.table + self.row_bytes * row,
                                      self.needs + 8 * row, codec.stream_address, buf.size) == 1


def _decode_rows(name: str, sources: native.Sources, which: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                 copy: CopyOut, rows: np.ndarray) -> int:
    """:func:`decode_into` of stream k into a one-chunk buffer, copied out by row ``rows[k]`` of
    ``copy`` (checked when it was made: only the spans are checked here, a batch of a read being
    a few hundred microseconds of GIL-held numpy calls otherwise). Returns as decode_into."""
    codec = _codecs[name]
    sizes = np.require(sizes, np.int64, ["C", "A"])
    at = sources.starts(which, starts, sizes, f"{name} batch decoding")
    sources.check_destination(copy.flat, f"{name} batch decoding")
    caps, table, needs = copy.caps[rows], copy.table[rows], copy.needs[rows]
    ctx = _context(codec)
    with place.staging(int(caps.max())) as buf:  # this thread's, apart from ``out``
        sources.check_destination(buf, f"{name} batch decoding")
        offsets = np.zeros(len(rows), np.int64)
        return _kernel.decode_all(codec.mode, codec.fn, ctx.ptr, 0, at.ctypes.data, sizes.ctypes.data, buf.ctypes.data,
                                  offsets.ctypes.data, caps.ctypes.data, len(rows), copy.flat.ctypes.data, table.ctypes.data,
                                  needs.ctypes.data, codec.stream_address, buf.size)


def decode_and_place(codec: str, sources: native.Sources, which: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                     copy: CopyOut, rows: np.ndarray, bad: np.ndarray, parts: int) -> np.ndarray:
    """Decompress chunk ``k`` (stream ``starts[k]``, ``sizes[k]`` of buffer ``which[k]`` of
    ``sources``) and place it as row ``rows[k]`` of ``copy`` says, in one native call per part
    (each part on its own loop). A chunk that does not decode to exactly its voxels marks its
    source buffer in ``bad`` (a shard, say), and the buffer's chunks after it are skipped; ones
    before it may have been placed: the caller places a bad buffer's chunks again its own way.
    Returns which chunks were placed, none of a bad buffer among them."""
    rows = copy.rows(rows)
    if not len(which) == len(starts) == len(sizes) == len(rows):
        raise ValueError(f"{codec} batch of {len(which)} chunks given {len(starts)} starts, {len(sizes)} sizes and "
                         f"{len(rows)} rows")
    if not len(which):
        return np.zeros(0, bool)

    def run(decode: Callable[[np.ndarray], int]) -> None:
        """``decode(chunks)`` (how many decoded before the first bad one) over each part on its
        own loop, resumed past each bad chunk and the rest of its buffer."""
        def part_task(part: np.ndarray) -> None:
            while len(part):
                done = decode(part)
                if done == len(part):
                    return
                failed = which[part[done]]
                bad[failed] = True
                part = part[done + 1:]
                part = part[which[part] != failed]

        if parts <= 1:
            part_task(np.arange(len(which)))
            return
        run_bounded(part_task, np.array_split(np.arange(len(which)), min(parts, len(which))), 1, parts, local=False)

    if copy.fused:
        # Each chunk copied out right after its decode, from a buffer of one chunk: decoding 64^3
        # zstd chunks into an 8 MiB staging buffer and copying them after measured ~15 % slower
        # (the decoder writes, then the copy reads, memory no cache holds).
        run(lambda part: _decode_rows(codec, sources, which[part], starts[part], sizes[part], copy, rows[part]))
        return ~bad[which]
    slot_sizes = copy.caps[rows]
    offsets = np.cumsum(slot_sizes) - slot_sizes
    with place.staging(int(slot_sizes.sum())) as staging:
        run(lambda part: decode_into(codec, sources, starts[part], sizes[part], staging, offsets[part], slot_sizes[part],
                                     which=which[part]))
        ok = ~bad[which]
        placed = rows[ok]
        place.place_chunks(copy.out, staging, offsets[ok], copy.shapes[placed], copy.src_lo[placed], copy.dst_lo[placed],
                           copy.size[placed], parts=parts)
    return ok
