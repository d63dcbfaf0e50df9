"""Root pytest configuration: Hypothesis profiles (dev / ci / deep).

Select with ``--hypothesis-profile=ci`` or ``HYPOTHESIS_PROFILE=ci``. Deadlines are off:
simulated runs vary in wall time with machine load, and timing is measured in bench/, not here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
