"""Shared pytest setup.

Tests run on the CPU in float32 by default. A test that needs float64 wraps its body in
`with jax.enable_x64(True):` rather than flipping the global flag, so tests stay independent under
pytest-xdist. Tests that need several devices start a subprocess (see `tests/_subprocess.py`) that
sets `jax_num_cpu_devices` before JAX starts.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
