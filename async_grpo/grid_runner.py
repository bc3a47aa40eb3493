"""The one resumable chunked runner every sweep binary uses (exact, LM, LR controller, ...).

`run_chunks(chunk_dir, num_cells, chunk_size, compute)` runs a grid's cells in fixed-size chunks:
`compute(idx)` runs the cells `idx` (one compiled program; the engine pads a short last chunk)
and returns {"curves": {name: [n, B]}, "summaries": {name: [n]}, "evals": {name: [n, E]}}. Each
finished chunk is saved atomically to <chunk_dir>/chunk_<i>.npz, so a killed sweep loses at
most the chunk in flight; a saved chunk is never recomputed. Shards (`shard` of `num_shards`,
processes or hosts sharing the directory) take every num_shards-th chunk; with `wait` each then
waits for the others' chunks. After each chunk it logs the chunk's wall time and the ETA.

The workdir guard is `async_grpo.workdir.claim` (the binaries call it before anything heavy);
the result is written with `async_grpo.results.GridResult.write`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping, Optional

from absl import logging
import numpy as np

from async_grpo import files
from async_grpo import metric_names as mn
from async_grpo import metrics as metrics_lib

PARTS = ("curves", "summaries", "evals")
# The chunk files written before this runner: per-step metrics m_<name>, summaries s_<name>,
# the LM sweep's final held-out accuracy.
_LEGACY = {"m_": "curves", "s_": "summaries"}


@dataclasses.dataclass
class ChunkRun:
    """The grid's concatenated outputs, in cell order, and what this invocation did."""
    curves: dict[str, np.ndarray]
    summaries: dict[str, np.ndarray]
    evals: dict[str, np.ndarray]
    chunk_wall_s: list          # every chunk's own wall time (whichever run computed it)
    chunks_computed: int        # by this invocation
    num_chunks: int
    wall_s: float               # this invocation's


def chunk_path(chunk_dir: str, i: int) -> str:
    return os.path.join(chunk_dir, f"chunk_{i:05d}.npz")


def save_chunk(path: str, out: Mapping[str, Mapping[str, np.ndarray]], wall_s: float) -> None:
    arrays = {f"{part}.{mn.file_key(k)}": np.asarray(v)
              for part in PARTS for k, v in (out.get(part) or {}).items()}
    files.save_npz_atomic(path, **arrays, wall_s=np.asarray(wall_s))


def load_chunk(path: str) -> tuple[dict[str, dict[str, np.ndarray]], float]:
    """A saved chunk -> ({part: {canonical name: array}}, its wall time or NaN); reads the chunk
    files of the sweeps written before this runner too."""
    out: dict[str, dict] = {p: {} for p in PARTS}
    with np.load(path) as z:
        for k in z.files:
            part, _, name = k.partition(".")
            if part in out and name:
                out[part][mn.canonical(name)] = z[k]
            elif k[:2] in _LEGACY:
                out[_LEGACY[k[:2]]][mn.canonical(k[2:])] = z[k]
            elif k == "heldout_accuracy":
                out["summaries"]["heldout/accuracy"] = z[k]
        wall = float(z["wall_s"]) if "wall_s" in z.files else float("nan")
    return out, wall


def run_chunks(chunk_dir: str, num_cells: int, chunk_size: int,
               compute: Callable[[np.ndarray], Mapping[str, Mapping[str, np.ndarray]]], *,
               label: str = "grid", shard: int = 0, num_shards: int = 1, wait: bool = True,
               poll_s: float = 1.0) -> Optional[ChunkRun]:
    """Runs (or resumes) the grid's chunks; -> the outputs of every chunk (None for a shard
    with wait=False, whose outputs another shard gathers)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} with num_shards={num_shards}: need "
                         "0 <= shard < num_shards")
    if chunk_size < 1 or num_cells < 1:
        raise ValueError(f"chunk_size={chunk_size} and num_cells={num_cells} must be >= 1")
    os.makedirs(chunk_dir, exist_ok=True)
    t0 = time.time()
    size = min(chunk_size, num_cells)
    starts = list(range(0, num_cells, size))
    mine = [i for i in range(len(starts)) if i % num_shards == shard]
    todo = [i for i in mine if not os.path.exists(chunk_path(chunk_dir, i))]
    times = []
    for done, i in enumerate(todo):
        t_chunk = time.time()
        idx = np.arange(starts[i], min(starts[i] + size, num_cells))
        out = compute(idx)
        times.append(time.time() - t_chunk)
        save_chunk(chunk_path(chunk_dir, i), out, times[-1])
        left = (len(todo) - done - 1) * float(np.median(times))
        logging.info("%s: chunk %d/%d (%d cells) done in %.1fs; ETA %s", label, i + 1,
                     len(starts), len(idx), times[-1], metrics_lib.format_duration(left))
    if not wait:
        return None
    while not all(os.path.exists(chunk_path(chunk_dir, i)) for i in range(len(starts))):
        time.sleep(poll_s)       # other shards' chunks
    parts, walls = zip(*(load_chunk(chunk_path(chunk_dir, i)) for i in range(len(starts))))
    cat = {p: {k: np.concatenate([q[p][k] for q in parts]) for k in parts[0][p]}
           for p in PARTS}
    return ChunkRun(cat["curves"], cat["summaries"], cat["evals"], list(walls), len(times),
                    len(starts), time.time() - t0)


def invocation(run: ChunkRun, num_shards: int = 1, wall_s: Optional[float] = None) -> dict:
    """The record of one invocation (appended to the result's invocations)."""
    return {"wall_s": run.wall_s if wall_s is None else wall_s,
            "chunks_computed": run.chunks_computed, "shard0_of": num_shards,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
