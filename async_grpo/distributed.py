"""Multi-process (multi-host) JAX: initialisation, per-process batch shares, global arrays.

Each process runs its own generator for its share of the global batch: prompts of step t are
split by process index (`process_share`), and the learner assembles the global batch on the
mesh's batch axes with `jax.make_array_from_process_local_data` (`global_batch`). Parameters
are placed from full host copies with `jax.make_array_from_callback` (`to_global`), and the
generator samples with a process-local copy (`to_local`).

`initialize()` reads the coordinator address, the number of processes and this process's id
from its arguments, else from the environment (`ASYNC_GRPO_COORDINATOR`,
`ASYNC_GRPO_NUM_PROCESSES`, `ASYNC_GRPO_PROCESS_ID`, or JAX's own `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`); with one process (the default) it does nothing. On CPU it
selects the gloo collectives (the only CPU implementation that works across processes in jax
0.10.2; tested with 2 local processes in tests/test_distributed.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import jax
import numpy as np

_ENV = {"coordinator": ("ASYNC_GRPO_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
        "num_processes": ("ASYNC_GRPO_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
        "process_id": ("ASYNC_GRPO_PROCESS_ID", "JAX_PROCESS_ID")}
_initialized = False


def _env(name: str) -> Optional[str]:
    for var in _ENV[name]:
        if os.environ.get(var):
            return os.environ[var]
    return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: str = "gloo") -> bool:
    """Initialises `jax.distributed` for a multi-process run; returns whether it did.

    Arguments left as None (or empty/0 for flags) come from the environment (module docstring).
    A no-op (False) for one process. Must run before any JAX computation.
    """
    global _initialized  # pylint: disable=global-statement
    coordinator_address = coordinator_address or _env("coordinator")
    n = num_processes or _env("num_processes")
    n = int(n) if n else 1
    pid = process_id if process_id is not None and process_id >= 0 else _env("process_id")
    if n <= 1:
        return False
    if _initialized:
        return True
    if not coordinator_address or pid is None:
        raise ValueError(f"A {n}-process run needs the coordinator address (host:port) and this "
                         f"process's id; got coordinator={coordinator_address!r}, "
                         f"process_id={pid!r}.")
    pid = int(pid)
    if not 0 <= pid < n:
        raise ValueError(f"process_id={pid} is not in [0, {n}).")
    platforms = str(jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", ""))
    if cpu_collectives and (platforms == "" or "cpu" in platforms):
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=n,
                               process_id=pid)
    _initialized = True
    return True


def process_slot() -> tuple[int, int]:
    """(this process's id, number of processes) from the environment variables `initialize`
    reads, without starting `jax.distributed`: for jobs whose processes share nothing but a
    directory (e.g. the shards of `experiments.sweep`). (0, 1) when they are unset."""
    n = int(_env("num_processes") or 1)
    pid = _env("process_id")
    if n > 1 and pid is None:
        raise ValueError(f"{_ENV['num_processes'][0]}={n} is set but no process id "
                         f"({' or '.join(_ENV['process_id'])})")
    return (int(pid) if n > 1 else 0), n


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def process_share(items: Sequence[Any], index: Optional[int] = None,
                  count: Optional[int] = None) -> list:
    """This process's contiguous share of `items` (the global batch's prompts)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if len(items) % count:
        raise ValueError(f"{len(items)} prompts per step do not split evenly over {count} "
                         "processes; make rl.prompts_per_step a multiple of it.")
    k = len(items) // count
    return list(items[index * k:(index + 1) * k])


def global_batch(local_arrays: dict, shardings: dict) -> dict:
    """The global batch from each process's rows (concatenated in process order)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
            for k, v in local_arrays.items()}


def to_global(tree, shardings):
    """Global arrays with `shardings` from full host copies (identical on every process)."""
    def place(x, sh):
        x = np.asarray(jax.device_get(x)) if not isinstance(x, np.ndarray) else x
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
    return jax.tree.map(place, tree, shardings)


def to_local(tree, device=None):
    """Process-local full copies of (possibly global, sharded) arrays, on `device`."""
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    device = device or jax.local_devices()[0]
    host = multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_put(host, device)


def gather_host_stats(stats: Mapping[str, float],
                      version: int) -> tuple[dict[str, float], np.ndarray]:
    """Global rollout statistics from every process's share (a collective: all processes call it
    at the same point with the same keys).

    Returns (the mean over processes of each statistic, the maximum for `*max_abs` keys, the
    generating version of each process's share in process order). Shares are equal
    (`process_share` splits the prompts evenly), so the mean of the per-process means is the
    global mean (for token-level means such as parity/mean_abs, up to unequal token counts).
    """
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    keys = sorted(stats)
    local = np.asarray([float(stats[k]) for k in keys] + [float(version)], np.float32)
    table = np.asarray(multihost_utils.process_allgather(local))   # [processes, keys + 1]
    if table.shape != (jax.process_count(), len(keys) + 1):
        raise AssertionError(f"Processes disagree on the rollout statistics: {table.shape} vs "
                             f"{len(keys) + 1} keys {keys}.")
    means = table[:, :-1].mean(axis=0)
    maxes = table[:, :-1].max(axis=0)   # a maximum's global value is the max over the shares
    return ({k: float(mx if k.endswith("max_abs") else v)
             for k, v, mx in zip(keys, means, maxes)},
            np.rint(table[:, -1]).astype(np.int64))
