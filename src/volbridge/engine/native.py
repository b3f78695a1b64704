"""The engine's two compiled loops, built as LLVM IR and compiled in process by llvmlite.

Both loops are a few lines of C in spirit: :func:`copy_rows` copies the rows of many boxes
between two buffers (:mod:`.place`), :func:`decode_all` calls a C decompressor once per chunk of
a shard (:mod:`.batch_decode`). They used to be numba functions. Loading numba for them cost
0.7-1.5 s once per process, even from numba's disk cache: importing numba, its typing registries
(which import scipy.linalg to probe for BLAS, 0.4 s alone) and the cached code. That made a
process's first big read 5-14x slower than its second (a 512^3 sharded read: 1.46 s, then 0.11
s). Here llvmlite (numba's own code generator, without numba) builds them in ~0.03 s after a
0.04-0.1 s import, and they are called through ctypes, which releases the GIL for the call as
numba's ``nogil`` did.

Every argument is a 64-bit integer (addresses too), cast to a pointer only at each load and
store, and no intrinsic or library function is called: llvmlite writes those casts as typed
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

import numpy as np

_I64 = ctypes.c_int64


@dataclass(frozen=True)
class Loops:
    copy_rows: Callable[[int, int, int, int], None]
    decode_all: Callable[..., int]
    engine: object  # the execution engine that owns their machine code: kept alive with them


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


def _build_or_false() -> Loops | bool:
    if os.environ.get("VOLBRIDGE_NO_NATIVE") or os.environ.get("VOLBRIDGE_NO_NUMBA"):
        return False
    if ctypes.sizeof(ctypes.c_void_p) != 8:  # the loops pass addresses as 64-bit integers
        return False
    try:
        import llvmlite.binding  # noqa: F401
    except ImportError:
        return False
    except Exception as e:  # noqa: BLE001 - a broken install (its LLVM library fails to load): numpy's paths
        warnings.warn(f"volbridge: cannot load llvmlite ({e}); using the slower numpy paths", RuntimeWarning, stacklevel=4)
        return False
    try:
        return _build()
    except Exception as e:  # noqa: BLE001 - any LLVM failure leaves the numpy paths
        warnings.warn(f"volbridge: cannot compile the engine's native loops ({e}); using the slower numpy paths",
                      RuntimeWarning, stacklevel=4)
        return False


def _build() -> Loops:
    import llvmlite.binding as llvm
    from llvmlite import ir

    module = ir.Module(name="volbridge_loops")
    copy_rows = _emit_copy_rows(ir, module)
    _emit_decode_all(ir, module, copy_rows)
    try:
        llvm.initialize()  # llvmlite < 0.45 wants it; later versions initialise themselves and refuse it
    except RuntimeError:
        pass
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                           opt=2, jit=True)
    parsed = llvm.parse_assembly(str(module))
    parsed.triple, parsed.data_layout = machine.triple, str(machine.target_data)
    parsed.verify()
    # No IR optimisation passes: the loops are written as they should run (the rows are moved 16
    # bytes at a time), and the pipeline took 0.2 s for no measured gain (copy rates within 5 %).
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    copy_rows = ctypes.CFUNCTYPE(None, _I64, _I64, _I64, _I64)(engine.get_function_address("copy_rows"))
    decode_all = ctypes.CFUNCTYPE(_I64, *[_I64] * 12)(engine.get_function_address("decode_all"))
    return Loops(copy_rows, decode_all, engine)


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


def _emit_copy_rows(ir, module):
    """``copy_rows(dst, src, table, n)``: for each of the ``n`` rows of the int64 table (12 values
    each: source start and y, z, c strides, destination start and strides, row bytes, and the y,
    z, c extents, all in bytes or counts) copy the box's rows from ``src`` to ``dst``
    (:func:`_copy_row`)."""
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64] * 4), name="copy_rows")
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


def _emit_decode_all(ir, module, copy_rows) -> None:
    """``decode_all(mode, fn, ctx, src, starts, sizes, dst, offsets, caps, n, out, table)``:
    chunk k is ``src[starts[k]:+sizes[k]]``, decoded by the C function at address ``fn`` into
    ``dst[offsets[k]:+caps[k]]`` (``starts`` ... ``caps``: addresses of int64 arrays); with a
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
    fn = ir.Function(module, ir.FunctionType(i64, [i64] * 12), name="decode_all")
    e = _Emitter(ir, fn)
    mode, fn_addr, ctx, src, starts, sizes, dst, offsets, caps, n, out, table = fn.args
    b = e.b
    used = b.alloca(i64, name="used")
    zstd_t, deflate_t = ir.FunctionType(i64, [i64] * 5), ir.FunctionType(i64, [i64] * 7)
    stop = fn.append_basic_block("stop")
    with b.goto_block(stop):
        k_stop = b.phi(i64, name="k_stop")
        b.ret(k_stop)

    def chunk(k):
        at = b.mul(k, e.const(8))
        cap, size = e.load(b.add(caps, at)), e.load(b.add(sizes, at))
        d, s = b.add(dst, e.load(b.add(offsets, at))), b.add(src, e.load(b.add(starts, at)))
        with b.if_else(b.icmp_signed("==", mode, e.const(0))) as (zstd, deflate):
            with zstd:
                got = b.call(b.inttoptr(fn_addr, zstd_t.as_pointer()), [ctx, d, cap, s, size])
                ok_zstd = b.icmp_unsigned("==", got, cap)
                zstd_end = b.block
            with deflate:
                b.store(e.const(0), used)
                result = b.call(b.inttoptr(fn_addr, deflate_t.as_pointer()),
                                [ctx, s, size, d, cap, b.ptrtoint(used, i64), e.const(0)])
                status = b.and_(result, e.const(0xFFFFFFFF))
                ok_deflate = b.and_(b.icmp_unsigned("==", status, e.const(0)), b.icmp_unsigned("==", b.load(used), size))
                deflate_end = b.block
        ok = b.phi(ir.IntType(1))
        ok.add_incoming(ok_zstd, zstd_end)
        ok.add_incoming(ok_deflate, deflate_end)
        bad = b.or_(b.not_(ok), b.icmp_unsigned("==", size, e.const(0)))
        k_stop.add_incoming(k, b.block)
        go_on = fn.append_basic_block("next")
        b.cbranch(bad, stop, go_on)
        b.position_at_end(go_on)
        with b.if_then(b.icmp_unsigned("!=", table, e.const(0))):
            b.call(copy_rows, [out, d, b.add(table, b.mul(k, e.const(12 * 8))), e.const(1)])

    e.for_range(n, chunk, "k")
    k_stop.add_incoming(n, b.block)
    b.branch(stop)
