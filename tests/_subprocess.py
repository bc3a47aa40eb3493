"""Runs a Python snippet in a fresh interpreter with N simulated CPU devices."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 300) -> str:
    """Runs `code` with `jax_num_cpu_devices=num_devices`; returns stdout, raises on failure."""
    prelude = (f"import jax\njax.config.update('jax_num_cpu_devices', {num_devices})\n"
               "jax.config.update('jax_platforms', 'cpu')\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"Subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
