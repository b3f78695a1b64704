"""The engine's compiled loops, built as LLVM IR and compiled in process by llvmlite.

The loops are a few lines of C in spirit: :func:`copy_rows` copies the rows of many boxes
between two buffers (:mod:`.place`), :func:`decode_all` calls a C decompressor once per chunk of
a shard (:mod:`.batch_decode`), :func:`encode_all` gathers and compresses a shard's chunks
back to back (:mod:`.batch_encode`), :func:`read_files` reads, decodes and places a read's chunk
files (:mod:`.grouped`), and :func:`body_write` is libcurl's write callback for response bodies
(:mod:`volbridge.kv.curl_body`). The first two used to be numba functions. Loading numba for them cost
0.7-1.5 s once per process, even from numba's disk cache: importing numba, its typing registries
(which import scipy.linalg to probe for BLAS, 0.4 s alone) and the cached code. That made a
process's first big read 5-14x slower than its second (a 512^3 sharded read: 1.46 s, then 0.11
s). Here llvmlite (numba's own code generator, without numba) builds them in ~0.03 s after a
0.04-0.1 s import, and they are called through ctypes, which releases the GIL for the call as
numba's ``nogil`` did.

Every argument is a 64-bit integer (addresses too), cast to a pointer only at each load and
store, and no intrinsic is called; C functions (the decompressors, libc's open, read and close)
are called through addresses the caller passes: llvmlite writes those casts as typed
pointers (``i64*``), which LLVM 15 and later read as opaque ``ptr``; checked to build and run on
llvmlite 0.42 (LLVM 14) to 0.50 (LLVM 22). The callers check every span against its buffer (and
that destinations are writable) first: the loops run without bounds checks.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import native_cache

_I64 = ctypes.c_int64


@dataclass(frozen=True)
class Loops:
    copy_rows: Callable[[int, int, int, int], None]
    decode_all: Callable[..., int]
    read_files: Callable[[int], int]
    encode_all: Callable[[int], int]
    #: addresses (never called from Python) of libcurl callbacks: :func:`_emit_body_write`
    body_write: int
    discard_header: int
    engine: object  # what owns their machine code (an LLVM engine, a shared library): kept alive with them


class LoadLock:
    """A lock for loading something once per process that a child forked while another thread
    held it does not wait for forever: the child gets a new lock (the holder does not exist
    there) and whatever the holder was loading stays as the holder had marked it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread in the ``with`` block
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # the forking thread is the child's one thread: a lock it holds, it releases there
        if self._lock.locked() and self._holder != threading.get_ident():
            self._lock, self._holder = threading.Lock(), None

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._holder = threading.get_ident()

    def __exit__(self, *exc) -> None:
        self._holder = None
        self._lock.release()


_lock = threading.Lock()
_loops: Loops | bool | None = None  # built loops, False where they cannot be built


def loops() -> Loops | None:
    """The compiled loops, built once per process; None without llvmlite, with
    ``VOLBRIDGE_NO_NATIVE`` (or the older ``VOLBRIDGE_NO_NUMBA``) set, or when LLVM fails here
    (then with a warning): the engine then runs its numpy paths."""
    global _loops
    if _loops is None:
        with _lock:
            if _loops is None:
                _loops = _build_or_false()
    return _loops or None


def cheap() -> bool:
    """Whether :func:`loops` returns at once or nearly (built already, or kept as a shared
    library by an earlier process: ~1 ms to load), so that even a small read may wait for it."""
    return _loops is not None or native_cache.has_library(_SOURCE_KEY)


class Sources:
    """The flat byte buffers a loop reads from, addressed absolutely: a loop adds the source
    address it is given to every start, so given 0 and absolute starts it reads from any number
    of buffers in one call (a group of shards, each in its own bytes object, placed or decoded at
    once). Every span must be checked against its own buffer first (:meth:`starts`): the loops
    run without bounds checks."""

    def __init__(self, buffers) -> None:
        arrays = [b if isinstance(b, np.ndarray) else np.frombuffer(b, np.uint8) for b in buffers]
        if not all(a.ndim == 1 and a.itemsize == 1 and a.flags.c_contiguous for a in arrays):
            raise ValueError("a native loop reads flat byte buffers only")
        self.arrays = arrays
        addresses = [a.ctypes.data for a in arrays]
        self.address = np.array(addresses, np.int64)
        self.size = np.array([a.size for a in arrays], np.int64)
        if len(arrays) == 1:
            self.address_of_one, self.size_of_one = addresses[0], arrays[0].size

    def starts(self, which: np.ndarray, starts: np.ndarray, lengths: np.ndarray, what: str) -> np.ndarray:
        """Absolute addresses of spans ``starts[k]`` .. ``+ lengths[k]`` of buffers ``which[k]``,
        after checking that each lies inside its buffer (as differences: a sum could wrap
        around int64 and pass)."""
        which, starts, lengths = (np.asarray(a).astype(np.int64, copy=False).reshape(-1) for a in (which, starts, lengths))
        if not len(which) == len(starts) == len(lengths):
            raise ValueError(f"{what} got {len(which)} buffer indexes for {len(starts)} starts and {len(lengths)} lengths")
        if len(which) and not (which.min() >= 0 and which.max() < len(self.arrays)):
            raise ValueError(f"{what} names a source buffer that does not exist")
        size = self.size[which]
        # starts within their buffers first: size - starts then cannot wrap
        if len(starts) and not (np.minimum(starts, lengths).min() >= 0 and (starts <= size).all() and (lengths <= size - starts).all()):
            raise ValueError(f"{what} spans outside its source buffer")
        return self.address[which] + starts

    def check_destination(self, dst: np.ndarray, what: str) -> None:
        """Raise ValueError unless ``dst`` can be handed to a loop as an address: a flat,
        contiguous, writable run of bytes (numpy's assignment refuses a read-only one; a loop
        would write through it) apart from every source (the loops' overlapping moves assume
        distinct buffers, as every engine caller has them)."""
        if not (dst.ndim == 1 and dst.itemsize == 1 and dst.flags.c_contiguous):
            raise ValueError(f"{what} needs a flat byte buffer to write to")
        if not dst.flags.writeable:
            raise ValueError(f"{what} into a read-only buffer")
        at = dst.ctypes.data
        end = at + dst.size
        if len(self.arrays) == 1:  # the common case, in Python integers
            apart = self.address_of_one + self.size_of_one <= at or end <= self.address_of_one
        else:
            apart = not ((self.address < end) & (at < self.address + self.size)).any()
        if dst.size and not apart:
            raise ValueError(f"{what} from a buffer that overlaps its destination")


def _after_fork_in_child() -> None:
    """A child forked while another thread was building the loops inherits the lock held (and
    LLVM's own state half-way) with no thread to finish: it runs the numpy paths instead of
    waiting forever."""
    global _lock, _loops
    if _lock.locked():
        _lock = threading.Lock()
        if _loops is None:
            _loops = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _NoLLVM(Exception):
    """llvmlite is installed but its LLVM library does not load (a broken install)."""


def _build_or_false() -> Loops | bool:
    if os.environ.get("VOLBRIDGE_NO_NATIVE") or os.environ.get("VOLBRIDGE_NO_NUMBA"):
        return False
    if ctypes.sizeof(ctypes.c_void_p) != 8:  # the loops pass addresses as 64-bit integers
        return False
    try:
        return _build()
    except ImportError:  # no llvmlite: numpy's paths
        return False
    except _NoLLVM as e:
        warnings.warn(f"volbridge: cannot load llvmlite ({e.__cause__}); using the slower numpy paths", RuntimeWarning,
                      stacklevel=4)
        return False
    except Exception as e:  # noqa: BLE001 - any LLVM failure leaves the numpy paths
        warnings.warn(f"volbridge: cannot compile the engine's native loops ({e}); using the slower numpy paths",
                      RuntimeWarning, stacklevel=4)
        return False


def _llvmlite_version_file() -> list[Path]:
    """llvmlite's version file, found without importing llvmlite (~85 ms): the LLVM that compiles
    the loops comes with it, so another llvmlite (another LLVM, maybe another miscompile or fix)
    names another library."""
    import importlib.util

    spec = importlib.util.find_spec("llvmlite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        version = Path(folder) / "_version.py"
        if version.is_file():
            return [version]
    return []


#: The source files the loops' machine code follows from, and the name of a kept shared library
#: of them: worked out as this module is imported, the code it builds being that of this import.
_SOURCES = [Path(__file__), Path(native_cache.__file__), *_llvmlite_version_file()]
_SOURCE_KEY = native_cache.source_key(_SOURCES)


def _loops_at(owner, address: Callable[[str], int]) -> Loops:
    """The loops at the addresses of their functions in ``owner`` (kept alive with them)."""
    return Loops(ctypes.CFUNCTYPE(None, _I64, _I64, _I64, _I64)(address("copy_rows")),
                 ctypes.CFUNCTYPE(_I64, *[_I64] * 15)(address("decode_all")),
                 ctypes.CFUNCTYPE(_I64, _I64)(address("read_files")),
                 ctypes.CFUNCTYPE(_I64, _I64)(address("encode_all")), address("body_write"), address("discard_header"),
                 owner)


def _loops_in(library: ctypes.CDLL) -> Loops:
    """The loops of a kept shared library (:mod:`.native_cache`)."""
    return _loops_at(library, lambda name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value)


def _build() -> Loops:
    kept = native_cache.load_library(_SOURCE_KEY)  # built by an earlier process: no llvmlite needed
    if kept is not None:
        return _loops_in(kept)
    try:
        import llvmlite.binding as llvm
    except ImportError:
        raise
    except Exception as e:  # its LLVM library fails to load
        raise _NoLLVM() from e
    from llvmlite import ir

    module = ir.Module(name="volbridge_loops")
    # The loops call the copy by a local name: in a shared library a call by its exported name
    # would go through the PLT, where another library's ``copy_rows`` loaded first (RTLD_GLOBAL,
    # LD_PRELOAD) would take it over (review: reads came back half zeros).
    copy_rows = _emit_copy_rows(ir, module, "copy_rows_local", "internal")
    _emit_exported_copy_rows(ir, module, copy_rows)
    _emit_decode_all(ir, module, copy_rows)
    _emit_read_files(ir, module, copy_rows)
    _emit_encode_all(ir, module, copy_rows)
    _emit_body_write(ir, module)
    try:
        llvm.initialize()  # llvmlite < 0.45 wants it; later versions initialise themselves and refuse it
    except RuntimeError:
        pass
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    text = str(module)
    library = native_cache.make_library(_SOURCE_KEY, text, llvm)  # for this process and the next ones
    if library is not None:
        return _loops_in(library)
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                           opt=2, jit=True)
    parsed = llvm.parse_assembly(text)
    parsed.triple, parsed.data_layout = machine.triple, str(machine.target_data)
    parsed.verify()
    # No IR optimisation passes: the loops are written as they should run (the rows are moved 16
    # bytes at a time), and the pipeline took 0.2 s for no measured gain (copy rates within 5 %).
    engine = llvm.create_mcjit_compiler(parsed, machine)
    native_cache.attach(engine, text, machine, llvm)  # the machine code of an earlier process, if any
    engine.finalize_object()
    return _loops_at(engine, engine.get_function_address)


class _Emitter:
    """IR building helpers: 64-bit loads from integer addresses and counted loops."""

    def __init__(self, ir, fn):
        self.ir, self.fn = ir, fn
        self.i64, self.i8 = ir.IntType(64), ir.IntType(8)
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))

    def const(self, v: int):
        return self.ir.Constant(self.i64, v)

    def load(self, addr, ty=None):
        ty = ty or self.i64
        return self.b.load(self.b.inttoptr(addr, ty.as_pointer()))

    def store(self, value, addr):
        self.b.store(value, self.b.inttoptr(addr, value.type.as_pointer()))

    def returning_count(self):
        """(block, phi): a block that returns the i64 its phi takes, for a loop over chunks that
        stops at the first one that fails and says how many went before it."""
        stop = self.fn.append_basic_block("stop")
        with self.b.goto_block(stop):
            count = self.b.phi(self.i64, name="k_stop")
            self.b.ret(count)
        return stop, count

    def for_range(self, n, body: Callable[[object], None], name: str) -> None:
        """``for i in range(n): body(i)``, with an explicit phi (no stack slot to promote)."""
        b = self.b
        before = b.block
        head, loop, done = (self.fn.append_basic_block(f"{name}.{s}") for s in ("head", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(self.i64, name=name)
        i.add_incoming(self.const(0), before)
        b.cbranch(b.icmp_signed("<", i, n), loop, done)
        b.position_at_end(loop)
        body(i)
        i.add_incoming(b.add(i, self.const(1)), b.block)
        b.branch(head)
        b.position_at_end(done)


def _emit_exported_copy_rows(ir, module, local) -> None:
    """``copy_rows``, the exported name of the copy (:func:`_emit_copy_rows`): a call of the local one."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64] * 4), name="copy_rows")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.call(local, list(fn.args))
    b.ret_void()


def _emit_copy_rows(ir, module, name: str = "copy_rows", linkage: str = ""):
    """``copy_rows(dst, src, table, n)``: for each of the ``n`` rows of the int64 table (12 values
    each: source start and y, z, c strides, destination start and strides, row bytes, and the y,
    z, c extents, all in bytes or counts) copy the box's rows from ``src`` to ``dst``
    (:func:`_copy_row`)."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64] * 4), name=name)
    if linkage:
        fn.linkage = linkage
    e = _Emitter(ir, fn)
    dst, src, table, n = fn.args
    b = e.b

    def box(k):
        row = b.add(table, b.mul(k, e.const(12 * 8)))
        s0, ssy, ssz, ssc, d0, dsy, dsz, dsc, nxb, ny, nz, nc = (e.load(b.add(row, e.const(8 * j))) for j in range(12))

        def channel(c):
            def plane(z):
                s_plane = b.add(b.add(s0, b.mul(c, ssc)), b.mul(z, ssz))
                d_plane = b.add(b.add(d0, b.mul(c, dsc)), b.mul(z, dsz))

                def line(y):
                    s_row = b.add(b.add(src, s_plane), b.mul(y, ssy))
                    d_row = b.add(b.add(dst, d_plane), b.mul(y, dsy))
                    _copy_row(e, s_row, d_row, nxb)

                e.for_range(ny, line, "y")

            e.for_range(nz, plane, "z")

        e.for_range(nc, channel, "c")

    e.for_range(n, box, "k")
    b.ret_void()
    return fn


def _copy_row(e: _Emitter, src, dst, nbytes) -> None:
    """Copy ``nbytes`` from address ``src`` to ``dst`` in unaligned moves, no call: rows are short
    (32-64 bytes in 32^3-64^3 uint8 chunks, a few bytes at a cutout's edge), where a memcpy call
    per row costs more than the copy. 16-byte moves, the last one overlapping the one before when
    the length is not a multiple of 16; shorter rows in two overlapping moves of 8, 4 or 2 bytes
    (source and destination are distinct buffers, so a byte written twice gets the same value)."""
    b, ir = e.b, e.ir

    def move(width: int, at) -> None:
        ty = ir.VectorType(e.i8, 16) if width == 16 else ir.IntType(8 * width)
        v = b.load(b.inttoptr(b.add(src, at), ty.as_pointer()), align=1)
        b.store(v, b.inttoptr(b.add(dst, at), ty.as_pointer()), align=1)

    def wide() -> None:
        e.for_range(b.udiv(nbytes, e.const(16)), lambda x: move(16, b.mul(x, e.const(16))), "x")
        with b.if_then(b.icmp_signed("!=", b.urem(nbytes, e.const(16)), e.const(0))):
            move(16, b.sub(nbytes, e.const(16)))

    def pair(width: int) -> Callable[[], None]:
        return lambda: (move(width, e.const(0)), move(width, b.sub(nbytes, e.const(width))))

    end = e.fn.append_basic_block("row.end")
    for width, body in ((16, wide), (8, pair(8)), (4, pair(4)), (2, pair(2)), (1, lambda: move(1, e.const(0)))):
        yes, no = e.fn.append_basic_block(f"row.{width}"), e.fn.append_basic_block(f"row.under{width}")
        b.cbranch(b.icmp_signed(">=", nbytes, e.const(width)), yes, no)
        b.position_at_end(yes)
        body()
        b.branch(end)
        b.position_at_end(no)
    b.branch(end)  # an empty row
    b.position_at_end(end)


#: The zstd frame magic number, little-endian, and the frame header's content checksum bit.
ZSTD_MAGIC, ZSTD_CHECKSUM_FLAG = 0xFD2FB528, 4
#: The biggest block of a zstd frame (ZSTD_BLOCKSIZE_MAX): libzstd decodes a block at a time.
ZSTD_BLOCK = 128 << 10
#: libzstd's error codes are the last 120 values of size_t (ZSTD_isError).
_ZSTD_ERROR_FROM = (1 << 64) - 120


class _Scratch:
    """Stack slots a decode uses, made in a function's entry block (an alloca inside a loop
    would grow the stack every pass): libdeflate's used-bytes count, and zstd's streaming
    ``ZSTD_outBuffer`` and ``ZSTD_inBuffer`` (pointer, size, position)."""

    def __init__(self, e: _Emitter):
        self.used = e.b.alloca(e.i64, name="used")
        self.out = e.b.alloca(e.ir.ArrayType(e.i64, 3), name="zout")
        self.inp = e.b.alloca(e.ir.ArrayType(e.i64, 3), name="zin")


def _emit_decode(e: _Emitter, mode, fn_addr, ctx, d, cap, s, size, scratch: _Scratch, need=None, stream=None):
    """Decode ``s[:size]`` into ``d[:cap]`` by the C function at ``fn_addr`` (mode 0 zstd, 1
    libdeflate: :func:`_emit_decode_all`); an i1, true when exactly ``cap`` bytes came of exactly
    ``size`` bytes of input, and the input was not empty (libzstd takes no frame at all for zero
    bytes).

    With ``need`` a block (:data:`ZSTD_BLOCK`) or more below ``cap`` (the caller copies out only
    the chunk's first ``need`` bytes: a cutout ending inside the chunk along its slowest axis) and
    ``stream`` the address of libzstd's (``ZSTD_decompressStream``, ``ZSTD_DCtx_reset``,
    ``ZSTD_getFrameContentSize``, ``ZSTD_findFrameCompressedSize``), a zstd frame is decoded only so far: libzstd decodes block by
    block, and stops at the first block that fills ``need``. A 300^3 cutout of 64^3 chunks needs
    9 of the 64 planes of its last layer of 36 chunks: half of each is decoded. True then when
    exactly ``need`` bytes came and the frame goes on. Only one zstd frame is decoded so: one
    whose header says it holds exactly ``cap`` bytes, with no content checksum (checked at the
    frame's end: such frames are decoded whole), and whose block headers end exactly at the
    end of the input (``ZSTD_findFrameCompressedSize`` walks them without decoding): a file cut
    short, or with anything after its frame, is decoded whole and refused as before. What the
    blocks after ``need`` hold is then not decoded: damage inside them is named by the reads
    that need them, not by this one (the voxels returned are those a whole decode gives)."""
    ir, b = e.ir, e.b
    i64 = e.i64
    zstd_t, deflate_t = ir.FunctionType(i64, [i64] * 5), ir.FunctionType(i64, [i64] * 7)
    with b.if_else(b.icmp_signed("==", mode, e.const(0))) as (zstd, deflate):
        with zstd:
            prefix = None
            if need is not None:
                prefix = _emit_zstd_prefix(e, ctx, d, cap, s, size, scratch, need, stream)
                prefix_ok = b.extract_value(prefix, 1)
                prefix_end = b.block
                whole, joined = e.fn.append_basic_block("zstd.whole"), e.fn.append_basic_block("zstd.joined")
                b.cbranch(b.extract_value(prefix, 0), joined, whole)
                b.position_at_end(whole)
            got = b.call(b.inttoptr(fn_addr, zstd_t.as_pointer()), [ctx, d, cap, s, size])
            ok_zstd = b.icmp_unsigned("==", got, cap)
            if prefix is not None:
                whole_end = b.block
                b.branch(joined)
                b.position_at_end(joined)
                merged = b.phi(ir.IntType(1))
                merged.add_incoming(prefix_ok, prefix_end)
                merged.add_incoming(ok_zstd, whole_end)
                ok_zstd = merged
            zstd_end = b.block
        with deflate:
            b.store(e.const(0), scratch.used)
            result = b.call(b.inttoptr(fn_addr, deflate_t.as_pointer()),
                            [ctx, s, size, d, cap, b.ptrtoint(scratch.used, i64), e.const(0)])
            status = b.and_(result, e.const(0xFFFFFFFF))
            ok_deflate = b.and_(b.icmp_unsigned("==", status, e.const(0)),
                                b.icmp_unsigned("==", b.load(scratch.used), size))
            deflate_end = b.block
    ok = b.phi(ir.IntType(1))
    ok.add_incoming(ok_zstd, zstd_end)
    ok.add_incoming(ok_deflate, deflate_end)
    return b.and_(ok, b.icmp_unsigned("!=", size, e.const(0)))


def _emit_zstd_prefix(e: _Emitter, ctx, d, cap, s, size, scratch: _Scratch, need, stream):
    """The prefix decode of :func:`_emit_decode`: an IR struct {i1 tried, i1 ok}."""
    ir, b = e.ir, e.b
    i64, i1 = e.i64, ir.IntType(1)
    pair = ir.LiteralStructType([i1, i1])
    before = b.block
    check, tried, done = (e.fn.append_basic_block(f"prefix.{n}") for n in ("check", "run", "done"))
    # only loads inside the input: its first 5 bytes are read after its size is known to hold them
    # worth it only when a whole block is left out: a frame of one block (a 32^3 chunk) would be
    # decoded just the same, then copied out of libzstd's own buffer
    saves_a_block = b.icmp_signed(">=", b.sub(cap, need), e.const(ZSTD_BLOCK))
    b.cbranch(b.and_(b.and_(b.icmp_unsigned("!=", stream, e.const(0)), saves_a_block),
                     b.icmp_unsigned(">=", size, e.const(5))), check, done)
    b.position_at_end(check)
    magic = b.load(b.inttoptr(s, ir.IntType(32).as_pointer()), align=1)
    descriptor = b.load(b.inttoptr(b.add(s, e.const(4)), e.i8.as_pointer()))
    plain = b.and_(b.icmp_unsigned("==", magic, ir.Constant(ir.IntType(32), ZSTD_MAGIC)),
                   b.icmp_unsigned("==", b.and_(descriptor, ir.Constant(e.i8, ZSTD_CHECKSUM_FLAG)),
                                   ir.Constant(e.i8, 0)))
    sized = e.fn.append_basic_block("prefix.sized")
    b.cbranch(plain, sized, done)
    b.position_at_end(sized)
    decompress, reset, content_size, frame_size = (e.load(b.add(stream, e.const(8 * j))) for j in range(4))
    two_args = ir.FunctionType(i64, [i64] * 2).as_pointer()
    # The frame says it holds exactly the chunk's bytes (a frame that says nothing is decoded
    # whole), and its blocks' headers (read, not decoded) end exactly at the input's end: no file
    # cut short, no second frame or bytes after it.
    declared = b.call(b.inttoptr(content_size, two_args), [s, size])
    whole_frame = framed = e.fn.append_basic_block("prefix.framed")
    b.cbranch(b.icmp_unsigned("==", declared, cap), whole_frame, done)
    b.position_at_end(whole_frame)
    spans = b.call(b.inttoptr(frame_size, two_args), [s, size])
    b.cbranch(b.icmp_unsigned("==", spans, size), tried, done)
    b.position_at_end(tried)
    b.call(b.inttoptr(reset, ir.FunctionType(i64, [i64, i64]).as_pointer()), [ctx, e.const(1)])  # session only
    for slot, values in ((scratch.out, (d, need)), (scratch.inp, (s, size))):
        for j, v in enumerate((*values, e.const(0))):
            b.store(v, b.gep(slot, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), j)]))
    r = b.call(b.inttoptr(decompress, ir.FunctionType(i64, [i64] * 3).as_pointer()),
               [ctx, b.ptrtoint(scratch.out, i64), b.ptrtoint(scratch.inp, i64)])
    pos = b.load(b.gep(scratch.out, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 2)]))
    # exactly ``need`` bytes, and the frame not ended there (r == 0: it is shorter than its chunk)
    ok = b.and_(b.icmp_unsigned("==", pos, need),
                b.and_(b.icmp_unsigned("!=", r, e.const(0)), b.icmp_unsigned("<", r, e.const(_ZSTD_ERROR_FROM))))
    tried_ok = b.insert_value(ir.Constant(pair, [ir.Constant(i1, 1), ir.Constant(i1, 0)]), ok, 1)
    tried_end = b.block
    b.branch(done)
    b.position_at_end(done)
    result = b.phi(pair)
    no = ir.Constant(pair, [ir.Constant(i1, 0), ir.Constant(i1, 0)])
    result.add_incoming(no, before)
    result.add_incoming(no, check)
    result.add_incoming(no, sized)
    result.add_incoming(no, framed)
    result.add_incoming(tried_ok, tried_end)
    return result


def _emit_decode_all(ir, module, copy_rows) -> None:
    """``decode_all(mode, fn, ctx, src, starts, sizes, dst, offsets, caps, n, out, table, needs,
    stream, dst_size)``: chunk k is ``src[starts[k]:+sizes[k]]``, decoded by the C function at
    address ``fn`` into ``dst[offsets[k]:+caps[k]]`` (a slot not inside ``dst[:dst_size]`` stops
    the loop there, as a chunk that does not decode does; ``starts`` ... ``caps``, ``needs``: addresses of
    int64 arrays; only its first ``needs[k]`` bytes where the zstd frame allows and ``stream`` is
    not 0, :func:`_emit_decode`); with a
    ``table`` (not 0), row k of it (:func:`_emit_copy_rows`, source starts relative to the
    decoded chunk) is then copied from there into ``out``, while the chunk is still in the CPU's
    cache (decoding into a small buffer reused per chunk). Returns
    how many chunks decoded to exactly caps[k] bytes from exactly sizes[k] bytes before the first
    that did not, or was empty (libzstd takes no frame at all for zero bytes): the caller checks
    those on its own path. Mode 0, ``ZSTD_decompressDCtx(ctx, dst, cap, src, size)``, returns the
    size written (an error is a huge size_t) and decodes every frame of its input; mode 1,
    ``libdeflate_gzip_decompress_ex(ctx, src, size, dst, cap, &used, NULL)``, returns 0 (an int
    enum: the upper half of the register is not part of it) only when it wrote exactly cap
    bytes, and says how many input bytes its one gzip member took."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, [i64] * 15), name="decode_all")
    e = _Emitter(ir, fn)
    mode, fn_addr, ctx, src, starts, sizes, dst, offsets, caps, n, out, table, needs, stream, dst_size = fn.args
    b = e.b
    scratch = _Scratch(e)
    stop, k_stop = e.returning_count()

    def chunk(k):
        at = b.mul(k, e.const(8))
        cap, size = e.load(b.add(caps, at)), e.load(b.add(sizes, at))
        offset = e.load(b.add(offsets, at))
        d, s = b.add(dst, offset), b.add(src, e.load(b.add(starts, at)))
        # (a second line of defence: the callers check every span first) the slot inside ``dst``
        inside = b.and_(b.icmp_unsigned("<=", offset, dst_size), b.icmp_unsigned("<=", cap, b.sub(dst_size, offset)))
        k_stop.add_incoming(k, b.block)
        fits = fn.append_basic_block("fits")
        b.cbranch(inside, fits, stop)
        b.position_at_end(fits)
        ok = _emit_decode(e, mode, fn_addr, ctx, d, cap, s, size, scratch, e.load(b.add(needs, at)), stream)
        k_stop.add_incoming(k, b.block)
        go_on = fn.append_basic_block("next")
        b.cbranch(b.not_(ok), stop, go_on)
        b.position_at_end(go_on)
        with b.if_then(b.icmp_unsigned("!=", table, e.const(0))):
            b.call(copy_rows, [out, d, b.add(table, b.mul(k, e.const(12 * 8))), e.const(1)])

    e.for_range(n, chunk, "k")
    k_stop.add_incoming(n, b.block)
    b.branch(stop)


#: Slots of the int64 argument block of ``read_files`` (:func:`_emit_read_files`), by name.
READ_FILES_ARGS = ("mode", "fn", "ctx", "open", "read", "close", "flags", "paths", "path_at", "n", "next", "rbuf",
                   "rcap", "dbuf", "dcap", "caps", "out", "table", "status", "needs", "stream", "alt_at", "alt_mode",
                   "alt_fn", "alt_ctx")

#: ``read_files`` modes beside the decoders' (0 zstd, 1 gzip): chunks stored as their voxels.
MODE_RAW = 2


def _emit_read_files(ir, module, copy_rows) -> None:
    """``read_files(args)``, ``args`` the address of an int64 block (:data:`READ_FILES_ARGS`):
    take chunk ``k`` from the shared counter at ``next`` (an atomic add: every thread of a read
    runs this loop over the same counter, so they share out the chunks one at a time to the
    end), read its file (the NUL-terminated path at ``paths + path_at[k]``) with libc's
    ``open(path, flags)``, ``read`` and ``close`` (addresses ``open`` ... ``close``) into
    ``rbuf[:rcap]``, decode it into ``dbuf[:caps[k]]`` (-4 unless ``caps[k] <= dcap``; mode 0, 1
    as :func:`_emit_decode_all`,
    with ``needs`` and ``stream``;
    mode 2 takes the file as the voxels, when it is exactly ``caps[k]`` bytes) and copy row k of
    ``table`` from there into ``out``. Where chunk k's file cannot be opened and ``alt_at`` is
    not 0, its other copy at ``paths + alt_at[k]`` is, decoded by ``alt_mode``, ``alt_fn``,
    ``alt_ctx`` (CloudVolume's gzipped ``key.gz`` beside plain chunk files: the plain name first,
    as the file store looks). ``status[k]`` becomes the file's size when the chunk was
    placed, else negative: -1 the open failed (absent, say), -2 a read failed (a directory),
    -3 the file filled ``rbuf`` (it may be bigger), -4 it did not decode to exactly its bytes.
    The caller reads those again on its checked path, which finds other names and says what
    is wrong; errno is never looked at here."""
    i64, i32, i8p = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
    fn = ir.Function(module, ir.FunctionType(i64, [i64]), name="read_files")
    e = _Emitter(ir, fn)
    b = e.b
    block = fn.args[0]
    a = {name: e.load(b.add(block, e.const(8 * j))) for j, name in enumerate(READ_FILES_ARGS)}
    scratch = _Scratch(e)
    open_t = ir.FunctionType(i32, [i8p, i32], var_arg=True)  # open(2) is variadic in C
    read_t, close_t = ir.FunctionType(i64, [i32, i8p, i64]), ir.FunctionType(i32, [i32])
    counter = b.inttoptr(a["next"], i64.as_pointer())

    head, body, done = (fn.append_basic_block(s) for s in ("take", "chunk", "done"))
    b.branch(head)
    b.position_at_end(head)
    k = b.atomic_rmw("add", counter, e.const(1), "monotonic")
    b.cbranch(b.icmp_signed("<", k, a["n"]), body, done)
    b.position_at_end(body)
    at = b.mul(k, e.const(8))
    status_at = b.add(a["status"], at)

    def fail(code: int, fd=None) -> None:
        if fd is not None:
            b.call(b.inttoptr(a["close"], close_t.as_pointer()), [fd])
        e.store(e.const(code), status_at)
        b.branch(head)

    def open_at(offsets):
        path = b.inttoptr(b.add(a["paths"], e.load(b.add(offsets, at))), i8p)
        return b.call(b.inttoptr(a["open"], open_t.as_pointer()), [path, b.trunc(a["flags"], i32)])

    fd_first = open_at(a["path_at"])
    first_end = b.block
    opened, not_opened, try_alt, alt_tried = (fn.append_basic_block(s) for s in ("opened", "not_opened", "alt", "alt.open"))
    b.cbranch(b.icmp_signed("<", fd_first, ir.Constant(i32, 0)), try_alt, opened)
    # the file absent: its other copy, where there is one (``alt_at``: CloudVolume's key.gz)
    b.position_at_end(try_alt)
    b.cbranch(b.icmp_unsigned("==", a["alt_at"], e.const(0)), not_opened, alt_tried)
    b.position_at_end(alt_tried)
    fd_alt = open_at(a["alt_at"])
    alt_end = b.block
    b.cbranch(b.icmp_signed("<", fd_alt, ir.Constant(i32, 0)), not_opened, opened)
    b.position_at_end(not_opened)
    fail(-1)

    # read until end of file or a full buffer
    b.position_at_end(opened)
    fd = b.phi(i32, name="fd")
    fd.add_incoming(fd_first, first_end)
    fd.add_incoming(fd_alt, alt_end)
    is_alt = b.phi(ir.IntType(1), name="is_alt")
    is_alt.add_incoming(ir.Constant(ir.IntType(1), 0), first_end)
    is_alt.add_incoming(ir.Constant(ir.IntType(1), 1), alt_end)
    mode, dec_fn, dec_ctx = (b.select(is_alt, a["alt_" + name], a[name]) for name in ("mode", "fn", "ctx"))
    before = b.block
    read_head, read_more, read_end, read_failed = (fn.append_basic_block(s) for s in ("read", "more", "eof", "rfail"))
    b.branch(read_head)
    b.position_at_end(read_head)
    got = b.phi(i64, name="got")
    got.add_incoming(e.const(0), before)
    r = b.call(b.inttoptr(a["read"], read_t.as_pointer()),
               [fd, b.inttoptr(b.add(a["rbuf"], got), i8p), b.sub(a["rcap"], got)])
    with b.if_then(b.icmp_signed("<", r, e.const(0))):
        b.branch(read_failed)
    b.cbranch(b.icmp_signed("==", r, e.const(0)), read_end, read_more)
    b.position_at_end(read_more)
    got_more = b.add(got, r)
    got.add_incoming(got_more, read_more)
    full = fn.append_basic_block("full")
    b.cbranch(b.icmp_signed(">=", got_more, a["rcap"]), full, read_head)
    b.position_at_end(full)
    fail(-3, fd)
    b.position_at_end(read_failed)
    fail(-2, fd)

    b.position_at_end(read_end)
    b.call(b.inttoptr(a["close"], close_t.as_pointer()), [fd])
    cap = e.load(b.add(a["caps"], at))
    row = b.add(a["table"], b.mul(k, e.const(12 * 8)))
    place, bad = fn.append_basic_block("place"), fn.append_basic_block("bad")
    with b.if_else(b.icmp_signed("==", mode, e.const(MODE_RAW))) as (raw, coded):
        with raw:
            ok_raw = b.icmp_signed("==", got, cap)
            raw_end = b.block
        with coded:
            # (a second line of defence: the caller sizes the decode buffer for every chunk)
            fits = fn.append_basic_block("fits")
            b.cbranch(b.icmp_unsigned("<=", cap, a["dcap"]), fits, bad)
            b.position_at_end(fits)
            ok_coded = _emit_decode(e, mode, dec_fn, dec_ctx, a["dbuf"], cap, a["rbuf"], got, scratch,
                                    e.load(b.add(a["needs"], at)), a["stream"])
            coded_end = b.block
    ok = b.phi(ir.IntType(1))
    ok.add_incoming(ok_raw, raw_end)
    ok.add_incoming(ok_coded, coded_end)
    src = b.select(b.icmp_signed("==", mode, e.const(MODE_RAW)), a["rbuf"], a["dbuf"])
    b.cbranch(ok, place, bad)
    b.position_at_end(bad)
    fail(-4)
    b.position_at_end(place)
    b.call(copy_rows, [a["out"], src, row, e.const(1)])
    e.store(got, status_at)
    b.branch(head)

    b.position_at_end(done)
    b.ret(e.const(0))


#: Slots of the int64 argument block of ``encode_all`` (:func:`_emit_encode_all`), by name.
ENCODE_ALL_ARGS = ("mode", "fn", "ctx", "level", "table", "starts", "sizes", "n", "scratch", "dst", "dcap", "out_sizes")


def _emit_encode_all(ir, module, copy_rows) -> None:
    """``encode_all(args)``, ``args`` the address of an int64 block (:data:`ENCODE_ALL_ARGS`):
    compress chunk k = 0, 1, ... of ``sizes[k]`` bytes into ``dst`` right after the chunk before
    it (the first at ``dst``), in the room left of ``dcap`` bytes, and store its compressed size
    at ``out_sizes[k]``. With a ``table`` (not 0) the chunk is first gathered by row k of it
    (:func:`_emit_copy_rows`, source starts absolute, destination starts 0) into ``scratch``
    and compressed from there, while it is in the CPU's cache; else it is read at address
    ``starts[k]``. Mode 0, ``ZSTD_compressCCtx(ctx, dst, room, src, size, level)``, returns the
    size written or an error (one of the last 120 values of size_t); mode 1,
    ``libdeflate_gzip_compress(ctx, src, size, dst, room)``, returns the size written or 0 when
    it does not fit. Returns how many chunks were compressed before the first that was not: the
    caller encodes that one and the rest on its own checked path."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, [i64]), name="encode_all")
    e = _Emitter(ir, fn)
    b = e.b
    block = fn.args[0]
    a = {name: e.load(b.add(block, e.const(8 * j))) for j, name in enumerate(ENCODE_ALL_ARGS)}
    pos = b.alloca(i64, name="pos")  # bytes of ``dst`` written so far
    b.store(e.const(0), pos)
    zstd_t, deflate_t = ir.FunctionType(i64, [i64] * 6), ir.FunctionType(i64, [i64] * 5)
    stop, k_stop = e.returning_count()

    def chunk(k):
        at = b.mul(k, e.const(8))
        size = e.load(b.add(a["sizes"], at))
        with b.if_else(b.icmp_unsigned("!=", a["table"], e.const(0))) as (gathered, in_place):
            with gathered:
                b.call(copy_rows, [a["scratch"], e.const(0), b.add(a["table"], b.mul(k, e.const(12 * 8))), e.const(1)])
                gathered_end = b.block
            with in_place:
                at_start = e.load(b.add(a["starts"], at))
                in_place_end = b.block
        src = b.phi(i64, name="src")
        src.add_incoming(a["scratch"], gathered_end)
        src.add_incoming(at_start, in_place_end)
        written = b.load(pos)
        d, room = b.add(a["dst"], written), b.sub(a["dcap"], written)
        with b.if_else(b.icmp_signed("==", a["mode"], e.const(0))) as (zstd, deflate):
            with zstd:
                got_zstd = b.call(b.inttoptr(a["fn"], zstd_t.as_pointer()), [a["ctx"], d, room, src, size, a["level"]])
                ok_zstd = b.icmp_unsigned("<", got_zstd, e.const(_ZSTD_ERROR_FROM))
                zstd_end = b.block
            with deflate:
                got_deflate = b.call(b.inttoptr(a["fn"], deflate_t.as_pointer()), [a["ctx"], src, size, d, room])
                ok_deflate = b.icmp_unsigned("!=", got_deflate, e.const(0))
                deflate_end = b.block
        got, ok = b.phi(i64), b.phi(ir.IntType(1))
        got.add_incoming(got_zstd, zstd_end)
        got.add_incoming(got_deflate, deflate_end)
        ok.add_incoming(ok_zstd, zstd_end)
        ok.add_incoming(ok_deflate, deflate_end)
        # (a second line of defence: the callers give every chunk its bound of room) no more than the room
        ok = b.and_(ok, b.icmp_unsigned("<=", got, room))
        k_stop.add_incoming(k, b.block)
        go_on = fn.append_basic_block("next")
        b.cbranch(ok, go_on, stop)
        b.position_at_end(go_on)
        e.store(got, b.add(a["out_sizes"], at))
        b.store(b.add(written, got), pos)

    e.for_range(a["n"], chunk, "k")
    k_stop.add_incoming(a["n"], b.block)
    b.branch(stop)


#: Slots of the int64 block a response body's ``body_write`` appends to (:func:`_emit_body_write`).
BODY_SINK_SLOTS = ("buf", "cap", "size", "need", "memcpy", "pauses")
#: libcurl's CURL_WRITEFUNC_PAUSE: the write callback's "keep this data, pause the transfer".
CURL_WRITEFUNC_PAUSE = 0x10000001


def _emit_body_write(ir, module) -> None:
    """Two libcurl callbacks (``size_t fn(char *data, size_t size, size_t nmemb, void *user)``):
    ``body_write`` appends ``size * nmemb`` bytes at ``data`` to the body in ``user``, the
    address of an int64 block (:data:`BODY_SINK_SLOTS`): copied by the C ``memcpy`` at slot
    ``memcpy`` to ``buf + size`` when they fit in ``cap`` bytes (``size`` grows by them); else
    nothing is copied, slot ``need`` becomes the size the body needs at least, the int64 at
    address ``pauses`` is incremented and the transfer is paused: libcurl keeps the data and
    hands it over again once the caller, having made room, resumes it. ``discard_header`` takes
    a header line and drops it (the caller asks libcurl for the headers it wants afterwards).

    Bodies used to go through pycurl's Python callback: a 256^3 zstd read over S3 took ~840
    calls, each making a bytes object (a copy) then copying it again, ~1/8 of the client's CPU."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, [i64] * 4), name="body_write")
    e = _Emitter(ir, fn)
    b = e.b
    data, size, nmemb, sink = fn.args
    slot = {name: b.add(sink, e.const(8 * j)) for j, name in enumerate(BODY_SINK_SLOTS)}
    n = b.mul(size, nmemb)
    got = e.load(slot["size"])
    end = b.add(got, n)
    fits, full = fn.append_basic_block("fits"), fn.append_basic_block("full")
    b.cbranch(b.icmp_unsigned("<=", end, e.load(slot["cap"])), fits, full)
    b.position_at_end(fits)
    memcpy_t = ir.FunctionType(i64, [i64] * 3)
    b.call(b.inttoptr(e.load(slot["memcpy"]), memcpy_t.as_pointer()), [b.add(e.load(slot["buf"]), got), data, n])
    e.store(end, slot["size"])
    b.ret(n)
    b.position_at_end(full)
    e.store(end, slot["need"])
    pauses = e.load(slot["pauses"])
    e.store(b.add(e.load(pauses), e.const(1)), pauses)
    b.ret(e.const(CURL_WRITEFUNC_PAUSE))

    drop = ir.Function(module, ir.FunctionType(i64, [i64] * 4), name="discard_header")
    d = ir.IRBuilder(drop.append_basic_block("entry"))
    d.ret(d.mul(drop.args[1], drop.args[2]))
