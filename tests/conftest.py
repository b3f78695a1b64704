import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["servers", "relay_fixtures"]

# Services journal unfinished jobs under ~/.cache/volbridge/jobs; the suite keeps its own, set
# before volbridge is imported (the directory is read once).
if "VOLBRIDGE_JOBS_DIR" not in os.environ:
    import tempfile

    os.environ["VOLBRIDGE_JOBS_DIR"] = tempfile.mkdtemp(prefix="vb-test-jobs-")

# "ci" runs more examples; "dev" keeps local iterations quick. Both are deterministic-seeded per test.
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "dev", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("VOLBRIDGE_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _poisoned_read_outputs(monkeypatch):
    """Reads inside a volume's bounds start from uninitialised memory and must write every voxel
    (place a chunk, or fill an absent one). Here they start from a byte pattern instead, so that a
    voxel the engine leaves unwritten shows in every test that reads (fresh memory is often zeros,
    which would hide it)."""
    from volbridge.engine import chunked

    def poisoned(shape, dtype):
        out = np.empty(shape, dtype=dtype, order="F")
        out.reshape(-1, order="F").view(np.uint8)[:] = 0xA5
        return out

    monkeypatch.setattr(chunked, "_uninitialised", poisoned)
