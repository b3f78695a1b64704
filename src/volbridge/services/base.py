"""The Service seam (the intern paper's Services): an operation that declares what it needs of
the volumes it touches, checked before any work starts, and then runs on any remote that has it.

A service's ``requires`` (of its source) and ``destination_requires`` are :class:`Requirement`
objects; :meth:`Service.check` raises a clear error naming the volume and the need at the first
one not met. Where a remote offers the operation on its own compute (a capability such as
``native_downsample``), :meth:`Service.native` says so and the service uses it; otherwise the
local implementation runs, on threads or a ``dask.distributed.Client`` (``executor=``). The same
line of code therefore serves every remote: ``mesh(url, [id])`` on ``bossdb://``, ``dvid://``,
precomputed or zarr alike (or ``vb.array(url).mesh([id])``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..engine.volume import Volume
from ..errors import InvalidArgumentError, ReadOnlyError


class Requirement(ABC):
    """One thing a service needs of a volume."""

    #: What is needed, for messages ("a segmentation layer").
    need: ClassVar[str]
    error: ClassVar[type[Exception]] = InvalidArgumentError

    @abstractmethod
    def problem(self, volume: Volume) -> str | None:
        """Why ``volume`` does not meet this requirement, or None when it does."""


class Segmentation(Requirement):
    need = "a segmentation layer of integer labels"

    def problem(self, volume: Volume) -> str | None:
        if volume.meta.layer_type != "segmentation":
            return "it is an image layer"
        if np.dtype(volume.meta.dtype).kind not in "ui":
            return f"its labels are {volume.meta.dtype}, not integers"
        return None


class Writable(Requirement):
    need = "a volume open for writing"
    error = ReadOnlyError

    def problem(self, volume: Volume) -> str | None:
        if "write" in volume.capabilities:
            return None
        return "it is open read-only (open it with mode='r+', or it cannot be written at all)"


class Service(ABC):
    """``run(source, ..., executor=None)``: ``executor`` is None (local threads), ``"processes"``
    (local worker processes, for units that hold the GIL such as meshing; a script then needs an
    ``if __name__ == "__main__":`` guard) or a ``dask.distributed.Client``; the work is split into
    units aligned to the destination's chunks or shards, so no two units write the same object."""

    name: ClassVar[str]
    requires: ClassVar[tuple[Requirement, ...]] = ()
    destination_requires: ClassVar[tuple[Requirement, ...]] = ()
    #: The capability of a remote that does this operation on its own compute, if any.
    native_capability: ClassVar[str | None] = None

    def check(self, source: Volume, destination: Volume | None = None) -> None:
        """Raise before any work starts if a volume lacks what this service needs (a remote that
        does the work itself needs nothing more of its source)."""
        pairs = [] if self.native(source) else [(source, self.requires, "source")]
        if destination is not None:
            pairs.append((destination, self.destination_requires, "destination"))
        for volume, requirements, role in pairs:
            for req in requirements:
                why = req.problem(volume)
                if why is not None:
                    raise req.error(f"{self.name} needs {req.need} as its {role}, but {volume.url}: {why}")

    def native(self, volume: Volume) -> bool:
        """Whether ``volume``'s remote does this operation itself (BossDB's downsampling)."""
        return self.native_capability is not None and self.native_capability in volume.capabilities

    @abstractmethod
    def run(self, source: Any, *args, executor=None, **kwargs) -> Any:
        """Do the work: on the remote's compute when it offers it, else locally or on ``executor``."""

    def __repr__(self) -> str:
        return f"<service {self.name}>"


class FunctionService(Service):
    """A service whose local implementation is one function of :mod:`volbridge.services`:
    ``run(source, *args, executor=None, **kwargs)`` calls ``function`` with those arguments (the
    function checks the requirements itself, before its work, through this object)."""

    def __init__(self, name: str, function, *, requires: tuple[Requirement, ...] = (),
                 destination_requires: tuple[Requirement, ...] = (), native_capability: str | None = None):
        self.name = name
        self.function = function
        self.requires = requires
        self.destination_requires = destination_requires
        self.native_capability = native_capability
        self.__doc__ = function.__doc__

    def run(self, source: Any, *args, executor=None, **kwargs) -> Any:
        return self.function(source, *args, executor=executor, **kwargs)

