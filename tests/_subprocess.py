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


def run_at_production_codegen(code: str, timeout: float = 600) -> str:
    """Runs `code` in a fresh interpreter at the production XLA flags: the environment's
    XLA_FLAGS without the default suite's -O0 (tests/conftest.py). For the tests that compare two
    different compiled programs bit for bit. Returns stdout; raises on failure."""
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if f != "--xla_backend_optimization_level=0")
    env = dict(os.environ, XLA_FLAGS=flags, ASYNC_GRPO_TEST_O0="0",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"Subprocess failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr[-6000:]}")
    return proc.stdout


# Runs a binary's `__main__` once per argv in forks of one interpreter that has already imported
# the binary's dependencies: each row is what `python -m module *argv` does (absl flags from
# sys.argv, logging to stderr, the interpreter's exit code and traceback printing), without paying
# the ~2.6 s of imports per row. JAX is imported but no backend is started before the forks.
_FORK_DRIVER = r'''
import importlib, json, os, runpy, sys, tempfile, traceback
module, rows, preload = json.loads(sys.argv[1])
for name in preload:
    importlib.import_module(name)
results = []
for argv in rows:
    err_fd, err_path = tempfile.mkstemp()
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(err_fd, 2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        sys.argv = [module] + argv
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:        # what the interpreter does with SystemExit(code)
            code = e.code
            if isinstance(code, str) or (code is not None and not isinstance(code, int)):
                print(code, file=sys.stderr)
                code = 1
            code = code or 0
        except BaseException:          # an uncaught exception: the interpreter's traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(err_path, encoding="utf-8", errors="replace") as f:
        results.append((os.waitstatus_to_exitcode(status), f.read()))
    os.close(err_fd)
    os.remove(err_path)
print(json.dumps(results))
'''


def run_binary_rows(module: str, rows: list, preload: tuple = (), env=None,
                    timeout: float = 600) -> list:
    """[(exit code, stderr)] of `python -m module *argv` for each argv in `rows`, each run in a
    fork of one interpreter that imported `preload` first (not `module` itself: its flags are
    defined when it runs as __main__)."""
    import json
    env = dict(env if env is not None else os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _FORK_DRIVER,
                           json.dumps([module, rows, list(preload)])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
