"""Layer 8: services on any source, each a :class:`~volbridge.services.base.Service` with declared
requirements (downsample, transfer; mesh and skeleton in their modules, which need the ``mesh``
extra), plus provenance records."""

from . import provenance
from .base import Requirement, Segmentation, Service, Writable
from .downsample import DOWNSAMPLE, downsample
from .transfer import TRANSFER, transfer

__all__ = ["downsample", "transfer", "provenance", "Service", "Requirement", "Segmentation", "Writable",
           "DOWNSAMPLE", "TRANSFER", "SERVICES"]


def __getattr__(name: str):
    if name == "SERVICES":  # mesh and skeleton import their extra's libraries only when used
        from .mesh import MESH
        from .skeleton import SKELETON

        return {s.name: s for s in (DOWNSAMPLE, TRANSFER, MESH, SKELETON)}
    raise AttributeError(name)
