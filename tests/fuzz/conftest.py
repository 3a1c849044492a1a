"""Hypothesis profiles: `ci` (the default, a few hundred cases a property) and `long` (bench/fuzz.py)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=int(os.environ.get("FLOODWALL_FUZZ_EXAMPLES", "5000")),
                          deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
