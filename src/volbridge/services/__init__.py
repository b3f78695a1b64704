"""Layer 8: services on any source (downsampling so far), built on the public array API."""

from .downsample import downsample

__all__ = ["downsample"]
