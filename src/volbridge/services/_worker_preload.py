"""Imported once by the fork server of :func:`volbridge.services.units.process_pool`: the modules
a worker needs, and the compiled loops loaded (the engine's, and the block mean's: numba's first
use in a process costs 0.5-1 s of setup, which every worker of every job would otherwise pay
again)."""

from __future__ import annotations

import importlib

import numpy as np

from .. import api  # noqa: F401 - opening volumes from URLs
from ..engine import place

place.load()
# the module (the package's ``downsample`` is the function)
importlib.import_module("volbridge.services.downsample")._mean_compiled(np.zeros((2, 2, 1), np.uint8, order="F"), (2, 2, 1))
