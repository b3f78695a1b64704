"""BossDB cutout bodies: a C-ordered ``(z, y, x)`` or ``(t, z, y, x)`` array as the REST dialect
sends it, in each media type, both ways.

Every decoder takes the shape and dtype the URL implies and checks the body against them *before*
decompressing what it claims (a few bytes must not inflate into gigabytes), so a body of the wrong
size, dtype or kind is a :class:`ChunkDecodeError` that says which, never a reshaped guess.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import imagecodecs
import numpy as np

from ..errors import ChunkDecodeError, UnsupportedError

BLOSC = "application/blosc"
BLOSC_PYTHON = "application/blosc-python"
NPYGZ = "application/npygz"
JPEG = "image/jpeg"
#: What a server may send and a client may ask for, the server's default first.
GET_TYPES = (BLOSC, BLOSC_PYTHON, NPYGZ, JPEG)
#: The most bytes one blosc frame holds (c-blosc 1: INT_MAX less its 16-byte header).
BLOSC_MAX_BYTES = 2**31 - 1 - 16
#: What a server accepts in a POST: blosc-python is a pickle, never loaded from a request.
POST_TYPES = (BLOSC, NPYGZ)


def encode(arr: np.ndarray, media_type: str) -> bytes:
    """Body of ``arr`` (C-ordered, the dialect's axis order) in ``media_type``."""
    arr = np.ascontiguousarray(arr)
    if media_type == BLOSC:
        # BossDB: python-blosc's compress(arr, typesize=...), blosclz with byte shuffle.
        return imagecodecs.blosc_encode(arr, level=5, compressor="blosclz", shuffle=1, typesize=min(arr.itemsize, 255))
    if media_type == BLOSC_PYTHON:
        import pickle

        # python-blosc's pack_array: a pickle of the array, blosc-compressed.
        return imagecodecs.blosc_encode(pickle.dumps(arr, protocol=2), level=5, compressor="blosclz", shuffle=1, typesize=arr.itemsize)
    if media_type == NPYGZ:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return zlib.compress(buf.getvalue(), 1)
    if media_type == JPEG:
        if arr.dtype != np.uint8:
            raise UnsupportedError(f"image/jpeg cutouts are for uint8 channels, not {arr.dtype}")
        planes = arr.reshape(-1, arr.shape[-1])  # z-stack along y: (t*z*y, x)
        return imagecodecs.jpeg8_encode(planes, level=85)
    raise UnsupportedError(f"cannot encode a cutout as {media_type!r}; use one of {', '.join(GET_TYPES)}")


def decode(body: bytes, media_type: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The C-ordered array of ``shape`` and ``dtype`` that ``body`` holds."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if media_type == BLOSC:
        if len(body) < 16 or body[0] not in (1, 2):
            raise ChunkDecodeError(f"the body is not a blosc frame ({len(body)} bytes)")
        claimed, _, cbytes = struct.unpack_from("<III", body, 4)
        if cbytes != len(body):
            raise ChunkDecodeError(f"the blosc frame says it has {cbytes} bytes but the body has {len(body)}")
        if claimed != nbytes:
            raise ChunkDecodeError(
                f"the body holds {claimed} bytes, but shape {shape} of {dtype} needs {nbytes}: "
                "wrong shape or dtype for the URL's ranges"
            )
        try:
            raw = imagecodecs.blosc_decode(body)
        except Exception as e:
            raise ChunkDecodeError(f"corrupt blosc body: {e}") from e
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if media_type == NPYGZ:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(body, nbytes + 4096)  # the .npy header is at most a few KiB
        except zlib.error as e:
            raise ChunkDecodeError(f"the body is not a zlib stream (npygz): {e}") from e
        if d.unconsumed_tail:
            raise ChunkDecodeError(f"the npygz body inflates to more than shape {shape} of {dtype} needs")
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as e:
            raise ChunkDecodeError(f"the npygz body is not a .npy array: {e}") from e
        if arr.dtype != dtype or arr.shape != tuple(shape):
            raise ChunkDecodeError(f"the body is {arr.dtype} of shape {arr.shape}, expected {dtype} of shape {tuple(shape)}")
        return arr
    if media_type == BLOSC_PYTHON:
        raise UnsupportedError("application/blosc-python bodies are pickles and are never loaded; send application/blosc")
    raise UnsupportedError(f"cannot decode a {media_type!r} body; send one of {', '.join(POST_TYPES)}")

