"""Shared test settings: float64 is enabled per test module where needed."""

import os

# Keep XLA from grabbing every core for its thread pools on the 2-core CI box.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
