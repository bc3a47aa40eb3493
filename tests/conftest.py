"""Shared pytest setup.

Tests run on the CPU in float32 by default. A test that needs float64 wraps its body in
`with jax.enable_x64(True):` rather than flipping the global flag, so tests stay independent under
pytest-xdist. Tests that need several devices start a subprocess (see `tests/_subprocess.py`) that
sets `jax_num_cpu_devices` before JAX starts.

One persistent XLA compilation cache per test session. Many tests compile the same programs
(the tiny pipeline, the exact testbed's grids, the binaries started as subprocesses); with the
cache a program compiled once in the session is loaded from disk by every later test, xdist
worker and subprocess (they inherit JAX_COMPILATION_CACHE_DIR from the environment). The
directory is a fresh temporary one that is removed at the end of the session, so a run from a
clean clone starts empty and no test can depend on what an earlier session left behind. Set
JAX_COMPILATION_CACHE_DIR yourself to keep a cache across sessions (it is then left alone). The
cache stores XLA's output for a key of the program, the compile options, the backend and the
JAX/jaxlib versions, so a hit is the executable a fresh compile would produce.

The default suite (`pytest` with the configured `-m "not slow"`) compiles with LLVM at -O0
(`XLA_FLAGS=--xla_backend_optimization_level=0`, appended to any XLA_FLAGS of your own): most of
its time is compiling small programs, and this cuts the suite's wall time by about a fifth on
2 cores. XLA's own HLO passes (fusion, layout) are unchanged; only the machine code is less
optimized, so float results may differ in the last bits from the production codegen. Tests that
compare a compiled program with a *different* program bit for bit (the population runner against
the pipeline) run their body in a fresh interpreter at the production flags
(`tests/_subprocess.py:run_at_production_codegen`). A run with another marker expression (the
slow suite `-m slow`, or `-m ""`) compiles at the production flags; ASYNC_GRPO_TEST_O0=0 turns
-O0 off for any run.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    # The controlling process (or a run without xdist) makes the directory before any worker or
    # subprocess starts; they find it in the environment.
    _OWN_CACHE = tempfile.mkdtemp(prefix="async_grpo_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    atexit.register(shutil.rmtree, _OWN_CACHE, ignore_errors=True)    # also after a usage error
# Cache every compile, not only those over JAX's default 1 s: on a loaded 2-core machine most of
# the suite's many small programs take 0.1-1 s each to compile.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

O0_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """-O0 codegen for the default selection only (see the module docstring). Runs before any
    test module is imported, so before JAX starts a backend; xdist workers and subprocesses
    inherit the environment."""
    default = (config.getoption("markexpr", "") or "").strip() == "not slow"
    flags = os.environ.get("XLA_FLAGS", "")
    if default and os.environ.get("ASYNC_GRPO_TEST_O0", "1") != "0" and O0_FLAG not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + O0_FLAG).strip()
