"""volbridge: one numpy-like array over every connectomics volume format and server.

    import volbridge as vb
    em = vb.array("precomputed:///data/em")      # or a bare path: the format is detected
    cut = em[0:10, -100:400, 1000:1700]          # absolute (z, y, x) voxels, zeros outside
"""

from . import errors
from .api import array, create
from .array import Scale, VolumeArray
from .errors import VolbridgeError

__version__ = "0.1.0"
__all__ = ["array", "create", "VolumeArray", "Scale", "VolbridgeError", "errors", "__version__"]
