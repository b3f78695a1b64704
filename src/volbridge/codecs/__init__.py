"""Layer 3: bytes <-> ndarray transforms by name."""

from .base import ChunkCodec, Compressor
from .compressed_segmentation import CompressedSegmentationCodec
from .compression import get_compressor, sniff
from .image import JpegCodec, PngCodec
from .raw import RawCodec

__all__ = [
    "ChunkCodec",
    "Compressor",
    "CompressedSegmentationCodec",
    "JpegCodec",
    "PngCodec",
    "RawCodec",
    "get_compressor",
    "sniff",
]
