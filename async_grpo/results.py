"""The one results format of a grid of runs (`GridResult`), and the stability fits every grid
shares.

A grid is a set of cells (one whole training run each), named by their axes (staleness S, learning
rate η, seed, b1, ...). Every sweep binary writes a `GridResult` to its results directory and every
reader (the study, the report, the notebook) reads it back with `read`; nothing else is read.

Files in a result directory (`GridResult.write`):

  result.json     kind, axis / summary / curve / eval names, trace_every, eval_steps, the fits
                  (η_max, censoring, the α fit, laws, regime), the config, meta (variant,
                  testbed, train config, collapse rules), the machine, wall times, invocations
  axes.npz        per cell [C]: each axis as numbers (η as float64, never text)
  summaries.npz   per cell [C]: collapse_step, collapsed, J_final, heldout/accuracy, ...
  curves.npz      per cell [C, T / trace_every]: per-step curves (block means over trace_every)
  evals.npz       per cell [C, n_evals]: held-out evaluations at `eval_steps` (optional)
  cells.csv       axes and summaries as text, for people (never read back)

Metric names are the vocabulary of `async_grpo.metric_names`: `.npz` keys are its `file_key`, and
every name read (also from results written before this format, `read` converts them) passes
through `metric_names.canonical`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Optional

import numpy as np

from async_grpo import files
from async_grpo import metric_names as mn
from async_grpo import scaling

FORMAT = "grid_result/1"
RECORD = "result.json"
AXES = ("S", "lr", "seed", "b1")       # the usual axes, in cell order (others may follow)


@dataclasses.dataclass
class GridResult:
    """A grid's results. Arrays are per cell, in cell order (C cells)."""
    kind: str                                        # "exact", "lm", "lr_control", ...
    axes: dict[str, np.ndarray]                      # {axis: [C]} numbers
    summaries: dict[str, np.ndarray]                 # {canonical name: [C]}
    curves: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)   # [C, T/k]
    trace_every: int = 1
    evals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)    # [C, n_evals]
    eval_steps: Optional[np.ndarray] = None          # [n_evals]
    fits: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: Optional[float] = None                   # this invocation's wall time
    chunk_wall_s: list = dataclasses.field(default_factory=list)
    invocations: list = dataclasses.field(default_factory=list)
    dir: Optional[str] = None                        # where it was read from (not stored)

    def __post_init__(self):
        self.summaries = {mn.canonical(k): np.asarray(v) for k, v in self.summaries.items()}
        self.curves = {mn.canonical(k): np.asarray(v) for k, v in self.curves.items()}
        self.evals = {mn.canonical(k): np.asarray(v) for k, v in self.evals.items()}
        self.axes = {k: np.asarray(v) for k, v in self.axes.items()}
        n = {len(v) for d in (self.axes, self.summaries, self.curves, self.evals)
             for v in d.values()}
        if len(n) > 1:
            raise ValueError(f"GridResult: per-cell arrays of different lengths {sorted(n)}")

    @property
    def num_cells(self) -> int:
        return len(next(iter(self.axes.values()))) if self.axes else 0

    @property
    def num_steps(self) -> Optional[int]:
        """T, from the curves (None without curves)."""
        if not self.curves:
            return None
        return next(iter(self.curves.values())).shape[1] * self.trace_every

    def axis(self, name: str) -> list:
        """The values of axis `name`, each once, in cell order (the grid's own order)."""
        return list(dict.fromkeys(self.axes[name].tolist()))

    def stability(self, b1: Optional[float] = None) -> dict:
        """The stability fits (η_max per S and seed, censoring, α fit, ...) of the grid, or of
        its cells at `b1` when the grid has several b1 values."""
        groups = self.fits.get("stability", [])
        if not groups:
            raise ValueError(f"{self.dir or self.kind}: no stability fits in this result")
        if b1 is None:
            return groups[0]
        for g in groups:
            if np.isclose(g.get("b1", 0.0), b1):
                return g
        raise ValueError(f"{self.dir}: no stability fits at b1={b1}")

    def cells(self) -> dict[str, np.ndarray]:
        """Axes and summaries as one column mapping (the rows of cells.csv)."""
        return {**self.axes, **self.summaries}

    def write(self, d: str) -> None:
        """Writes the result into directory `d` (each file atomically; result.json last)."""
        os.makedirs(d, exist_ok=True)
        files.save_npz_atomic(os.path.join(d, "axes.npz"), **self.axes)
        files.save_npz_atomic(os.path.join(d, "summaries.npz"),
                              **{mn.file_key(k): v for k, v in self.summaries.items()})
        files.save_npz_atomic(os.path.join(d, "curves.npz"),
                              **{mn.file_key(k): v for k, v in self.curves.items()})
        if self.evals:
            files.save_npz_atomic(os.path.join(d, "evals.npz"),
                                  **{mn.file_key(k): v for k, v in self.evals.items()})
        files.write_csv_atomic(os.path.join(d, "cells.csv"), {
            k: v.astype(int) if v.dtype == bool else v for k, v in self.cells().items()
            if np.ndim(v) == 1})
        record = {
            "format": FORMAT, "kind": self.kind, "num_cells": self.num_cells,
            "axes": list(self.axes), "summaries": list(self.summaries),
            "curves": list(self.curves), "trace_every": int(self.trace_every),
            "evals": list(self.evals),
            "eval_steps": None if self.eval_steps is None else np.asarray(self.eval_steps).tolist(),
            "fits": self.fits, "config": self.config, "meta": self.meta,
            "machine": self.machine, "wall_s": self.wall_s, "chunk_wall_s": self.chunk_wall_s,
            "invocations": self.invocations}
        files.write_json_atomic(os.path.join(d, RECORD), record)


def exists(d: str) -> bool:
    """Whether `d` holds a grid result (this format, or one written before it)."""
    return (os.path.exists(os.path.join(d, RECORD)) or
            os.path.exists(os.path.join(d, "summary.json")) and
            os.path.exists(os.path.join(d, "cells.csv")))


def _npz(path: str, canon: bool = True) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        return {}
    with np.load(path) as z:
        return {(mn.canonical(k) if canon else k): z[k] for k in z.files}


def read(d: str) -> GridResult:
    """The grid result in directory `d`; a directory written before this format (an exact
    variant's summary.json + cells.csv + chunks, or an LM sweep's summary.json + cells.csv +
    curves.npz) is converted on the fly."""
    path = os.path.join(d, RECORD)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(d, "summary.json")):
            return _read_legacy(d)
        raise ValueError(f"{d!r} holds no grid result ({RECORD}); run the sweep into it first")
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
    if r.get("format") != FORMAT:
        raise ValueError(f"{path}: format {r.get('format')!r}, this code reads {FORMAT!r}")
    return GridResult(
        kind=r["kind"], axes=_npz(os.path.join(d, "axes.npz"), canon=False),
        summaries=_npz(os.path.join(d, "summaries.npz")),
        curves=_npz(os.path.join(d, "curves.npz")), trace_every=int(r["trace_every"]),
        evals=_npz(os.path.join(d, "evals.npz")),
        eval_steps=None if r.get("eval_steps") is None else np.asarray(r["eval_steps"]),
        fits=r["fits"], config=r["config"], meta=r["meta"], machine=r["machine"],
        wall_s=r.get("wall_s"), chunk_wall_s=r.get("chunk_wall_s", []),
        invocations=r.get("invocations", []), dir=d)


def read_sweep(d: str) -> dict[str, GridResult]:
    """{variant: GridResult} of an exact-sweep workdir (one result per variant subdirectory),
    or {"grpo": result} of a directory that is itself one result; {} if `d` has none."""
    if not os.path.isdir(d):
        return {}
    if os.path.exists(os.path.join(d, RECORD)) or os.path.exists(os.path.join(d, "curves.npz")):
        return {"grpo": read(d)}
    out = {}
    for sub in sorted(os.listdir(d)):
        if exists(os.path.join(d, sub)):
            gr = read(os.path.join(d, sub))
            out[gr.meta.get("variant", sub)] = gr
    order = _variant_order(d)
    return {v: out[v] for v in sorted(out, key=lambda v: order.get(v, len(order)))}


def _variant_order(d: str) -> dict[str, int]:
    """The variants' order as the sweep ran them (its record), else alphabetical."""
    try:
        with open(os.path.join(d, "run.json"), encoding="utf-8") as f:
            variants = json.load(f)["config"].get("variants", "")
    except (OSError, KeyError, ValueError):
        try:
            with open(os.path.join(d, "summary.json"), encoding="utf-8") as f:
                return {v["variant"]: i for i, v in enumerate(json.load(f)["variants"])}
        except (OSError, KeyError, ValueError):
            return {}
    names = [v.strip() for v in str(variants).split(",") if v.strip()]
    return {v: i for i, v in enumerate(names)}


def csv_columns(path: str) -> dict[str, np.ndarray]:
    """A CSV file as columns of float arrays (non-numeric columns as str arrays)."""
    import csv  # pylint: disable=import-outside-toplevel
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for k in (rows[0] if rows else {}):
        vals = [r[k] for r in rows]
        try:
            out[k] = np.array([float(v) for v in vals])
        except ValueError:
            out[k] = np.array(vals)
    return out


def _read_legacy(d: str) -> GridResult:
    """A results directory written before this format (exact variant or LM sweep)."""
    with open(os.path.join(d, "summary.json"), encoding="utf-8") as f:
        s = json.load(f)
    cols = csv_columns(os.path.join(d, "cells.csv"))
    axes = {k: cols.pop(k) for k in AXES if k in cols}
    if "heldout_greedy_final" in cols:
        cols["heldout/accuracy"] = cols.pop("heldout_greedy_final")
    if "results" in s:          # an exact variant: per-b1 fits, traces in the chunk files
        curves: dict[str, list] = {}
        for path in sorted(glob.glob(os.path.join(d, "chunks", "chunk_*.npz"))):
            with np.load(path) as z:
                for k in z.files:
                    if k.startswith("m_"):
                        curves.setdefault(k[2:], []).append(z[k])
        n = len(axes["S"])
        every = int((s.get("traces") or {}).get("trace_every", 1))
        fits = {"stability": s["results"], **({"regime": s["regime"]} if "regime" in s else {})}
        meta = {k: s[k] for k in ("variant", "testbed", "surrogate", "train", "collapse_rules")
                if k in s}
        top = os.path.join(os.path.dirname(os.path.abspath(d)), "summary.json")
        config, machine = {}, {}
        if os.path.exists(top):        # the sweep's config and machine were written above
            with open(top, encoding="utf-8") as f:
                t = json.load(f)
            config, machine = t.get("config", {}), t.get("machine", {})
        return GridResult("exact", axes, cols, {k: np.concatenate(v)[:n] for k, v in
                                                curves.items()}, every, fits=fits, meta=meta,
                          config=config, machine=machine,
                          wall_s=s.get("wall_s"), chunk_wall_s=s.get("chunk_s", []),
                          invocations=[{"wall_s": s.get("wall_s")}], dir=d)
    keys = ("eta_max", "eta_max_censor", "eta_max_geomean", "collapse_frac",
            "heldout_final_mean", "alpha_fit_S_ge_1")
    fits = {"stability": [{k: s[k] for k in keys if k in s}]}
    meta = {"collapse_rules": s.get("collapse_rules"), "lr_control": s.get("lr_control"),
            "run": s.get("config", {}),
            "processes": s.get("processes", 1), "num_chunks": s.get("num_chunks")}
    return GridResult("lm", axes, cols, _npz(os.path.join(d, "curves.npz")), 1, fits=fits,
                      config={"run": s.get("config", {})}, meta=meta, machine=s.get("machine", {}),
                      wall_s=s.get("wall_s"), chunk_wall_s=s.get("chunk_wall_s", []),
                      invocations=s.get("invocations", []), dir=d)


def previous_invocations(d: str) -> list:
    """The invocations recorded in `d`'s result (a rerun appends its own to them)."""
    path = os.path.join(d, RECORD)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("invocations", [])
    if os.path.exists(os.path.join(d, "summary.json")):
        with open(os.path.join(d, "summary.json"), encoding="utf-8") as f:
            return json.load(f).get("invocations", [])
    return []


# ----------------------------------------------------------------------------------------------
# The stability fits every grid shares.
# ----------------------------------------------------------------------------------------------


def stability(lags, lrs, collapsed: np.ndarray, n_boot: Optional[int] = None) -> dict:
    """η_max per S and seed with its censoring (`scaling.eta_max_per_seed`), its geometric mean
    over seeds, the collapsed fraction per (S, η) and the censored fit η_max ∝ S^−α over S ≥ 1
    (`scaling.bootstrap_alpha`) of a grid's collapsed [nS, nE, nR] array."""
    lrs = np.asarray(lrs)
    eta, censor = scaling.eta_max_per_seed(lrs, collapsed)
    kw = {} if n_boot is None else {"n_boot": n_boot}
    return {
        "eta_max": {str(s): eta[i].tolist() for i, s in enumerate(lags)},
        "eta_max_censor": {str(s): censor[i].tolist() for i, s in enumerate(lags)},
        "eta_max_geomean": {str(s): float(np.exp(np.log(eta[i]).mean()))
                            for i, s in enumerate(lags)},
        "collapse_frac": {str(s): collapsed[i].mean(1).tolist() for i, s in enumerate(lags)},
        "alpha_fit_S_ge_1": scaling.bootstrap_alpha(lags, lrs, collapsed, **kw)}


def cube(gr: GridResult, b1: Optional[float] = None) -> dict[str, Any]:
    """The (S, η, seed) product of a grid's cells (at `b1` when it has several):
    lags [nS], lrs [nE], seeds [nR], index [nS, nE, nR] into the cells (−1 never remains)."""
    a = gr.axes
    sel = np.ones(gr.num_cells, bool)
    if "b1" in a and len(np.unique(a["b1"])) > 1:
        if b1 is None:
            raise ValueError("grids with several b1 values: select one b1 first")
        sel = np.isclose(a["b1"], b1)
    lags = np.unique(a["S"][sel]).astype(int)
    lrs = np.unique(a["lr"][sel])
    seeds = np.unique(a["seed"][sel]).astype(int)
    index = np.full((len(lags), len(lrs), len(seeds)), -1, int)
    for row in np.flatnonzero(sel):
        index[np.searchsorted(lags, a["S"][row]), np.searchsorted(lrs, a["lr"][row]),
              np.searchsorted(seeds, a["seed"][row])] = row
    if (index < 0).any():
        raise ValueError(f"{gr.dir}: the grid is not a full (S, η, seed) product")
    return dict(lags=lags, lrs=lrs, seeds=seeds, index=index)
