"""Layer 8: services on any source (downsampling and transfers so far), built on the public array API."""

from . import provenance
from .downsample import downsample
from .transfer import transfer

__all__ = ["downsample", "transfer", "provenance"]
