"""``jpeg`` and ``png``: a chunk stored as one 2-D image.

Concatenating the image rows gives the chunk's Fortran-order ``[x, y, z]`` voxels; CloudVolume and
neuroglancer write width ``sx`` and height ``sy*sz``, and any ``w*h == sx*sy*sz`` reads. Channels are
interleaved per pixel in the image and planar in the chunk.
"""

from __future__ import annotations

from abc import abstractmethod

import imagecodecs
import numpy as np

from ..errors import ChunkDecodeError, UnsupportedError
from .base import ChunkCodec, Shape4


class _ImageCodec(ChunkCodec):
    dtypes: tuple[str, ...]
    channels: tuple[int, ...]

    def check(self, dtype: np.dtype, num_channels: int) -> None:
        if np.dtype(dtype).name not in self.dtypes or num_channels not in self.channels:
            raise UnsupportedError(
                f"{self.name} encoding holds {'/'.join(self.dtypes)} with {self.channels} channels, "
                f"not {np.dtype(dtype).name} with {num_channels}"
            )

    @abstractmethod
    def _decode_image(self, data: bytes) -> np.ndarray:
        """The 2-D (or 2-D + channels) image in ``data``."""

    @abstractmethod
    def _encode_image(self, image: np.ndarray) -> bytes:
        """Bytes for an (h, w) or (h, w, c) image."""

    def decode(self, data: bytes, shape: Shape4, dtype: np.dtype) -> np.ndarray:
        sx, sy, sz, nc = shape
        try:
            img = self._decode_image(data)
        except Exception as e:
            raise ChunkDecodeError(f"corrupt {self.name} image ({len(data)} bytes): {e}") from e
        img_c = 1 if img.ndim == 2 else img.shape[2]
        if img.shape[0] * img.shape[1] != sx * sy * sz or img_c != nc or img.dtype != np.dtype(dtype):
            raise ChunkDecodeError(
                f"{self.name} image is {img.shape} {img.dtype}, expected {sx * sy * sz} "
                f"{np.dtype(dtype).name} pixels with {nc} channel(s) for a {shape[:3]} chunk"
            )
        return img.reshape(sz, sy, sx, nc).transpose(2, 1, 0, 3)

    def encode(self, chunk: np.ndarray) -> bytes:
        sx, sy, sz, nc = chunk.shape
        img = np.ascontiguousarray(chunk.transpose(2, 1, 0, 3)).reshape(sz * sy, sx, nc)
        return self._encode_image(img[..., 0] if nc == 1 else img)


class JpegCodec(_ImageCodec):
    name = "jpeg"
    dtypes = ("uint8",)
    channels = (1, 3)

    def __init__(self, quality: int = 85):
        self.quality = int(quality)

    def _decode_image(self, data):
        return imagecodecs.jpeg8_decode(data)

    def _encode_image(self, image):
        return imagecodecs.jpeg8_encode(image, level=self.quality)


class PngCodec(_ImageCodec):
    name = "png"
    dtypes = ("uint8", "uint16")
    channels = (1, 2, 3, 4)

    def __init__(self, level: int = 6):
        self.level = int(level)

    def _decode_image(self, data):
        return imagecodecs.png_decode(data)

    def _encode_image(self, image):
        # imagecodecs' default output estimate is too small for incompressible images a few
        # pixels wide (narrow edge chunks): give an explicit worst-case bound.
        raw = image.size * image.itemsize + image.shape[0]
        return imagecodecs.png_encode(image, level=self.level, out=raw + raw // 8 + 4096)
