import os

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
