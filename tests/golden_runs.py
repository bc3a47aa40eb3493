r"""Golden runs: short SFT, GRPO (S = 0 and fixed S = 2) and exact-sweep runs through the binaries.

Records, for each run, the SHA-256 of the final parameters (every leaf's bytes in key-path order,
read back from the newest orbax checkpoint with orbax alone, so the project's code is not trusted
to read its own output) and the metric lines with the wall-clock keys removed. The exact sweep is
recorded by its cells.csv and the η_max / α numbers of its summary.json.

  python -m tests.golden_runs --out=/tmp/golden.json [--workdir=/tmp/golden_runs]
  python -m tests.golden_runs --out=/tmp/now.json --compare=tests/data/golden_runs.json

`--compare` prints, per run, whether the parameter hash is identical and which metric keys differ
(with the largest absolute difference). The binaries are run as subprocesses with the command
lines below, which only use flags that every version of the project has had.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from async_grpo import files, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/addition.py"

# A tiny model on 2-digit addition: 300 SFT steps reach ~6 % greedy / ~9 % sampled accuracy, so
# GRPO groups carry signal.
COMMON = {
    "task.kwargs.num_digits": 2, "model.preset": "tiny", "model.max_seq_len": 24,
    "eval.num_problems": 64, "eval.batch_size": 64,
}
SFT = {"sft.steps": 300, "sft.batch_size": 32, "sft.eval_every": 100,
       "sft.optimizer.lr": 3e-3}
GRPO = {"rl.steps": 8, "rl.prompts_per_step": 16, "rl.group_size": 8, "rl.eval_every": 4,
        "rl.checkpoint_every": 4, "rl.optimizer.lr": 1e-3, "rl.optimizer.warmup_steps": 2}
RUNS = {
    "grpo_s0": {},
    "grpo_fixed_s2": {"staleness.policy": "fixed", "staleness.max_lag": 2,
                      "staleness.queue_size": 2, "diagnostics.bias_every": 3},
}
SWEEP = {"lags": "0,1,4", "lr_min": 2.0, "lr_max": 64.0, "num_seeds": 2, "train.num_steps": 200,
         "chunk_size": 64, "n_boot": 200}

# Keys whose values depend on the wall clock or on thread timing, not on the computation.
_TIMING = ("time", "wall_s", "steps_per_sec", "generator/queued", "rollout/generate_s")


def _flags(d):
    return [f"--config.{k}={v}" for k, v in d.items()]


def _run(module, workdir, flags, config=CONFIG):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", module, f"--workdir={workdir}"]
    if config:
        cmd.append(f"--config={config}")
    proc = subprocess.run(cmd + flags, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd + flags)} failed:\n{proc.stderr[-5000:]}")
    return " ".join(cmd[1:] + flags)


def params_hash(ckpt_dir: str) -> tuple[int, str]:
    """(newest step, SHA-256 of its "params" item) read with orbax alone."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    step = steps[-1]
    path = os.path.join(ckpt_dir, str(step), "params")
    tree = ocp.StandardCheckpointer().restore(path)
    h = hashlib.sha256()
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(keypath).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return step, h.hexdigest()


def metric_lines(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in _TIMING and not k.startswith("time/")}
            for r in recs]


def record(workdir: str) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    out = {"machine": {"python": platform.python_version(), "processor": _cpu_model(),
                       "platform": platform.platform()}, "runs": {}}
    sft_dir = os.path.join(workdir, "sft")
    cmd = _run("experiments.sft", sft_dir, _flags({**COMMON, **SFT}))
    step, h = params_hash(os.path.join(sft_dir, "checkpoints"))
    out["runs"]["sft"] = {"command": cmd, "step": step, "params_sha256": h,
                          "metrics": metric_lines(sft_dir)}
    for name, extra in RUNS.items():
        d = os.path.join(workdir, name)
        cmd = _run("experiments.train", d, _flags({**COMMON, **GRPO, "init_from": sft_dir,
                                                    **extra}))
        step, h = params_hash(os.path.join(d, "checkpoints"))
        out["runs"][name] = {"command": cmd, "step": step, "params_sha256": h,
                             "metrics": metric_lines(d)}
    d = os.path.join(workdir, "exact_sweep")
    cmd = _run("experiments.exact_sweep", d, _flags(SWEEP), config=None)
    summaries = {}
    for variant, gr in results.read_sweep(d).items():
        summaries[variant] = {"cells_csv_sha256": _cells_csv_sha256(gr), "results": [
            {k: r.get(k) for k in ("b1", "eta_max", "eta_max_censor", "alpha_fit_S_ge_1",
                                    "collapse_time_law", "collapse_frac", "J_final_mean")}
            for r in gr.fits["stability"]]}
    out["runs"]["exact_sweep"] = {"command": cmd, "variants": summaries}
    return out


def _cells_csv_sha256(gr) -> str:
    """The hash of the cells table as the exact sweep wrote it before the GridResult format
    (these columns, `files.write_csv_atomic`'s number format), so the stored hashes compare."""
    cols = ("S", "lr", "seed", "b1", "J_init", "J_final", "J_best", "collapse_step", "collapsed")
    cells = gr.cells()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.csv")
        files.write_csv_atomic(path, {k: cells[k].astype(int) if k == "collapsed" else cells[k]
                                      for k in cols})
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _diff(a, b, path=""):
    """Yields (path, a, b) for every differing leaf of two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                yield f"{path}/{k}", a.get(k, "<missing>"), b.get(k, "<missing>")
            else:
                yield from _diff(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diff(x, y, f"{path}[{i}]")
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                         and math.isnan(b)):
        yield path, a, b


def compare(new: dict, old: dict) -> bool:
    """Prints, per run: the parameter hash, the values that differ, and the metric keys only one
    side has (added or removed keys are reported apart from changed values). -> all identical."""
    same = True
    for name in old["runs"]:
        o, n = old["runs"][name], new["runs"].get(name)
        if n is None:
            print(f"{name}: missing from the new record")
            same = False
            continue
        diffs = [d for d in _diff(n, o) if not d[0].startswith("/command")]
        changed = [d for d in diffs if "<missing>" not in (d[1], d[2])]
        added = sorted({d[0].rsplit("/", 1)[-1] for d in diffs if d[2] == "<missing>"})
        removed = sorted({d[0].rsplit("/", 1)[-1] for d in diffs if d[1] == "<missing>"})
        status = "IDENTICAL" if not diffs else (
            f"{len(changed)} changed values" if changed else "common values identical")
        if "params_sha256" in o:
            status += (", params hash identical" if o["params_sha256"] == n["params_sha256"]
                       else ", params hash DIFFERS")
        print(f"{name}: {status}")
        if added:
            print(f"    keys only in the new record: {added}")
        if removed:
            print(f"    keys only in the golden record: {removed}")
        for path, x, y in changed[:40]:
            print(f"    {path}: new {x!r} vs golden {y!r}")
        same &= not changed and not removed and o.get("params_sha256") == n.get("params_sha256")
    return same


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write the record to")
    ap.add_argument("--workdir", default="/tmp/golden_runs", help="where the runs go")
    ap.add_argument("--compare", default="", help="a golden record to compare with")
    args = ap.parse_args()
    rec = record(args.workdir)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    print(f"wrote {args.out}")
    if args.compare:
        with open(args.compare, encoding="utf-8") as f:
            ok = compare(rec, json.load(f))
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
