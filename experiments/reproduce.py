r"""Reproduces the study's figures: runs (or reuses) the experiments, then draws the six figures.

  python -m experiments.reproduce --figure=all --scale=cpu --workdir=runs/reproduce
  python -m experiments.reproduce --figure=phase,eta_max --scale=cpu --workdir=runs/reproduce
  python -m experiments.reproduce --scale=gpu --workdir=runs/reproduce_gpu   # writes, runs nothing

--scale=cpu: every stage a figure needs runs on this machine (about 10 minutes on 2 CPU cores in
all, docs/results.md lists each stage's time; see STAGES for what each is; a stage's `needs` run
first). Each stage is an ordinary experiment binary run in a child
process into <workdir>/<stage>/; its log is <workdir>/logs/<stage>.log. A stage whose results are
complete is reused, a killed stage resumes from its saved chunks (the binaries save every finished
chunk), and a stage launched with different arguments than the results it finds is refused by the
binary. Progress and an ETA (stage estimates measured on a 2-core CPU, rescaled by the stages
already done) are printed while it runs. Figures go to <workdir>/figures/figN_<name>.png/.pdf, and
<workdir>/results.md holds the claims table (`experiments.study.claims_table`).

--scale=tiny: the same stages on toy grids (seconds each); for tests and for trying the pipeline.
The numbers it prints mean nothing.

--scale=draw: runs nothing; draws the figures and the claims table from whatever results the
workdir holds (e.g. the full learning grid of docs/learning_regime.md in <workdir>/lm_learn).

--scale=gpu: writes <workdir>/gpu/ — the commands a GPU/TPU user runs for the paper's setting
(Llama-3.2-1B on GSM8K, one `experiments.train` run per (S, η, seed) cell; and the LM-testbed grid
at full resolution with the population runner) — and runs nothing. Point `--workdir` of the LM
grid at <workdir>/lm_sweep and this binary draws its figures from it afterwards.

Figures: 1 phase, 2 eta_max, 3 t_collapse, 4 delta, 5 cosine, 6 reward, 7 learning_curves,
8 eta_star, 9 ceiling, 10 learning_time (`experiments.study`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

from absl import flags

from async_grpo import files
from async_grpo import metrics as metrics_lib
from experiments import _main, study

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _flags() -> dict:
    return {"figure": flags.DEFINE_string(
                "figure", "all", "Comma-separated figures to draw: all, or any of "
                + ", ".join(study.FIGURES) + f" (or their numbers 1-{len(study.FIGURES)})."),
            "scale": flags.DEFINE_enum(
                "scale", "cpu", ["cpu", "tiny", "gpu", "draw"], "cpu: run on this machine; "
                "tiny: toy grids for tests; gpu: write the commands for a GPU/TPU run, run "
                "nothing; draw: run nothing, draw the figures and the claims table from the "
                "results already in --workdir (a figure whose results are missing says so).")}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One experiment binary run into <workdir>/<name>.

    `est_s` is its wall time on a 2-core CPU at --scale=cpu (for the ETA); `done` the file whose
    presence means finished; `figures` the figures that read it."""
    name: str
    module: str
    args: dict        # scale -> list of flags
    est_s: dict       # scale -> seconds
    done: str
    figures: tuple
    what: str
    needs: tuple = ()     # stages whose results this one reads (run first, even if not asked)


# Each stage names its config with an argument (`path:arg`): ":study" keeps the per-step traces
# the cosine and reward figures read, ":tiny" (--scale=tiny) also shrinks the grid to a toy one.
_CONFIGS = "--config=experiments/configs/"

STAGES = (
    Stage("exact_sweep", "experiments.exact_sweep",
          {"cpu": [_CONFIGS + "exact_sweep.py:study"], "tiny": [_CONFIGS + "exact_sweep.py:tiny"]},
          {"cpu": 45, "tiny": 15}, "run.json",
          ("phase", "eta_max", "t_collapse", "cosine", "reward"),
          "exact testbed, large drift: population mode (no sampling noise), SGD, GRPO and the "
          "no-ratio control, S ∈ {0,1,2,4,8,16} × 21 η × 5 seeds, 500 steps, float64"),
    Stage("exact_sampled", "experiments.exact_sweep",
          {"cpu": [_CONFIGS + "study_small_drift.py:adam,study"],
           "tiny": [_CONFIGS + "study_small_drift.py:adam,tiny"]},
          {"cpu": 120, "tiny": 15}, "run.json",
          ("phase", "eta_max", "t_collapse", "cosine", "reward"),
          "exact testbed, small drift: sampled mode (G = 8 responses per prompt from π_φ, so "
          "diffusive noise), Adam, η 0.02 … 0.64, S ∈ {0,1,2,4,8,16}, 3 seeds, T = 10000"),
    Stage("exact_bias", "experiments.exact_bias",
          {"cpu": [], "tiny": [_CONFIGS + "exact_bias.py:tiny"]},
          {"cpu": 10, "tiny": 10}, "bias.json", ("delta",),
          "exact testbed: ‖δ‖ along stale trajectories and at controlled (θ, φ) pairs"),
    Stage("lm_sweep", "experiments.sweep",
          {"cpu": [_CONFIGS + "sweep_lm.py:study"]},
          {"cpu": 230}, "result.json",
          ("phase", "eta_max", "t_collapse", "cosine", "reward"),
          "LM testbed: the small transformer on 2-digit addition after SFT, GRPO grid"),
    Stage("lm_bias", "experiments.lm_bias",
          {"cpu": [_CONFIGS + "lm_bias.py",
                   "--config.run.init_from={workdir}/lm_sweep/sft"]},
          {"cpu": 160}, "bias.json", ("delta",),
          "LM testbed: ‖δ‖ with the noise floor removed (32 coupled batch pairs per η × t × s, "
          "from the LM grid's SFT checkpoint)", needs=("lm_sweep",)),
    Stage("lm_learn", "experiments.sweep",
          {"cpu": [_CONFIGS + "sweep_lm.py:learn_study"]},
          {"cpu": 210}, "result.json", ("learning_curves", "eta_star", "ceiling", "learning_time"),
          "LM testbed, learning regime: GRPO from the shipped 28.8 % warm start, S ∈ {0, 1, 4, "
          "16} × 4 η × 2 seeds, T = 100, held-out accuracy every 20 steps (the full grid of "
          "docs/learning_regime.md is sweep_lm.py:learn)"),
    Stage("lm_learn_control", "experiments.learn_control",
          {"cpu": [_CONFIGS + "learn_control.py:quick"]},
          {"cpu": 75}, "ess/result.json", ("learning_control",),
          "LM testbed, learning regime: the best fixed η, the drift controller and the VCPO "
          "baseline at S = 4 against S = 0, 2 held-out seeds, T = 40 (the full comparison of "
          "docs/learning_regime.md, S up to 16 and 5 seeds, is learn_control.py)"),
    Stage("lm_learn_time", "bench.async_pipeline",
          {"cpu": ["--config=bench/async_pipeline_config.py:learn"]},
          {"cpu": 40}, "async_pipeline.json", ("learning_time",),
          "the learning regime's step, timed: sampling + reward and the learner step alone, "
          "the pipeline at S = 0 and S = 1 (the wall-clock model's t_gen and t_learn)"),
)


def parse_figures(spec: str) -> list[str]:
    """'all' or a comma list of names / numbers 1-N -> figure names (in FIGURES order)."""
    if spec.strip() == "all":
        return list(study.FIGURES)
    out = set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit() and 1 <= int(item) <= len(study.FIGURES):
            out.add(study.FIGURES[int(item) - 1])
        elif item in study.FIGURES:
            out.add(item)
        else:
            raise ValueError(f"--figure={spec!r}: unknown figure {item!r}; allowed: all, "
                             f"{', '.join(study.FIGURES)} or 1-{len(study.FIGURES)}")
    if not out:
        raise ValueError(f"--figure={spec!r}: no figure named")
    return [f for f in study.FIGURES if f in out]


def stages_for(names, scale: str) -> list[Stage]:
    """The stages figures `names` read at `scale`, plus the stages they need, in STAGES order."""
    want = {s.name for s in STAGES if scale in s.args and set(s.figures) & set(names)}
    want |= {n for s in STAGES if s.name in want for n in s.needs}
    return [s for s in STAGES if s.name in want and scale in s.args]


class Progress:
    """Prints elapsed time and an ETA over a list of stages with estimated durations; the
    estimates of the stages left are rescaled by (measured / estimated) of the stages done."""

    def __init__(self, estimates: dict[str, float], out=sys.stdout):
        self.est, self.done, self.out = dict(estimates), {}, out
        self.t0 = time.time()

    def reuse(self, name: str) -> None:
        """Stage `name` is reused: it takes no time and says nothing about this machine's speed."""
        self.est.pop(name, None)
        self.done.pop(name, None)

    def eta(self, current: str | None = None, current_elapsed: float = 0.0) -> float:
        ratio = 1.0
        if self.done:
            ratio = sum(self.done.values()) / max(1e-9, sum(self.est[k] for k in self.done))
        left = sum(self.est[k] for k in self.est if k not in self.done and k != current) * ratio
        if current is not None:
            left += max(0.0, self.est[current] * ratio - current_elapsed)
        return left

    def say(self, msg: str, current: str | None = None, current_elapsed: float = 0.0):
        fd = metrics_lib.format_duration
        print(f"[{fd(time.time() - self.t0)} elapsed, ETA {fd(self.eta(current, current_elapsed))}]"
              f" {msg}", file=self.out, flush=True)


def run_stage(stage: Stage, scale: str, workdir: str, progress: Progress,
              heartbeat_s: float = 30.0) -> None:
    """Runs one stage in a child process (or reuses its results); raises on failure."""
    sdir = os.path.join(workdir, stage.name)
    marker = os.path.join(sdir, "stage.json")
    argv = [sys.executable, "-m", stage.module, f"--workdir={sdir}"] + [
        a.replace("{workdir}", workdir) for a in stage.args[scale]]
    if os.path.exists(os.path.join(sdir, stage.done)) and os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            prev = json.load(f)
        if prev.get("args") == stage.args[scale]:
            progress.reuse(stage.name)
            progress.say(f"{stage.name}: reusing finished results in {sdir}")
            return
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    log_path = os.path.join(workdir, "logs", f"{stage.name}.log")
    progress.say(f"{stage.name}: {stage.what} (log: {log_path})", stage.name)
    t0 = time.time()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(a) for a in argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        while True:
            try:
                rc = proc.wait(timeout=heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                progress.say(f"{stage.name}: running", stage.name, time.time() - t0)
            except KeyboardInterrupt:
                proc.terminate()
                raise
    wall = time.time() - t0
    if rc != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"stage {stage.name} failed (exit {rc}); last lines of {log_path}:\n"
                           f"{tail}")
    files.write_json_atomic(marker, {"args": stage.args[scale], "wall_s": wall,
                                     "command": " ".join(shlex.quote(a) for a in argv)})
    progress.done[stage.name] = wall
    progress.say(f"{stage.name}: done in {metrics_lib.format_duration(wall)}")


# ----------------------------------------------------------------------------------------------
# --scale=gpu: the commands, not the runs.
# ----------------------------------------------------------------------------------------------

# Llama-3.2-1B on GSM8K (experiments/configs/gsm8k_llama.py), fixed lag S, Adam. The paper reports
# S·η_max ≈ 1.6e-6 at S ∈ {8, 16, 32}; the grid brackets η_max by a factor ≥ 4 on both sides at
# every S, adds S = 0 and S = 2, and has 3 seeds.
GPU_LAGS = (0, 2, 8, 16, 32)
GPU_LRS = (1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5)
GPU_SEEDS = (0, 1, 2)
GPU_STEPS = 400


def gpu_commands(workdir: str) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# The study at the paper's scale: Llama-3.2-1B(-Instruct) GRPO on GSM8K, one run per",
        "# (S, eta, seed) cell, one GPU each: an 80 GB card or an H200 fits every S of the grid",
        "# by bench/memory_plan.py (experiments/configs/gsm8k_llama.py has the plan and its cost).",
        "# Written by `python3 -m experiments.reproduce --scale=gpu`; nothing here has run.",
        "#",
        "#   MODEL=/path/to/Llama-3.2-1B-Instruct GSM8K=/path/to/gsm8k/train.jsonl \\",
        "#       bash gsm8k_llama1b_grid.sh OUT",
        "#",
        "# OUT: where the runs go (one workdir per cell). Cells are independent: split this file",
        "# over machines as you like. A killed cell resumes from its workdir; a finished one is",
        "# skipped by the binary.",
        "set -euo pipefail",
        'if [ $# -ne 1 ]; then echo "usage: bash $0 OUT (the runs\' directory)" >&2; exit 2; fi',
        ': "${MODEL:?set MODEL=/path/to/Llama-3.2-1B-Instruct}"',
        ': "${GSM8K:?set GSM8K=/path/to/gsm8k/train.jsonl}"',
        'mkdir -p "$1"',
        'OUT=$(cd "$1" && pwd)',
        "# The repository root (the --config paths are relative to it); where this was written:",
        f'cd "${{ASYNC_GRPO_ROOT:-{_REPO_ROOT}}}"',
    ]
    for s in GPU_LAGS:
        for lr in GPU_LRS:
            for seed in GPU_SEEDS:
                lines.append(
                    f"python3 -m experiments.train --config=experiments/configs/gsm8k_llama.py "
                    f'--workdir="$OUT/S{s}_lr{lr:g}_seed{seed}" --config.model.hf_path="$MODEL" '
                    f'--config.task.path="$GSM8K" --config.staleness.max_lag={s} '
                    f"--config.rl.optimizer.lr={lr:g} --config.seed={seed} "
                    f"--config.rl.steps={GPU_STEPS}")
    return "\n".join(lines) + "\n"


def write_gpu(workdir: str) -> list[str]:
    gdir = os.path.join(workdir, "gpu")
    os.makedirs(gdir, exist_ok=True)
    cmd = os.path.join(gdir, "gsm8k_llama1b_grid.sh")
    files.write_text_atomic(cmd, gpu_commands(workdir))
    os.chmod(cmd, 0o755)
    lm = os.path.join(gdir, "lm_grid.sh")
    files.write_text_atomic(lm, "\n".join([
        "#!/usr/bin/env bash",
        "# The LM-testbed grid at full resolution (experiments/configs/sweep_lm.py, default: S in",
        "# {0,1,2,4,8,16}, 13 eta from 3e-5 to 2e-3, 3 seeds, T = 200) with the population runner",
        "# (cells vmapped in chunks sized to --config.memory_budget_gb). Then rerun",
        "# `python -m experiments.reproduce --scale=cpu --workdir=" + workdir + "` to draw it.",
        "set -euo pipefail",
        f'cd "${{ASYNC_GRPO_ROOT:-{_REPO_ROOT}}}"   # the repository root',
        f"python3 -m experiments.sweep --config=experiments/configs/sweep_lm.py "
        f"--workdir={shlex.quote(os.path.abspath(os.path.join(workdir, 'lm_sweep_full')))} "
        "--config.memory_budget_gb=40",
        ""]))
    os.chmod(lm, 0o755)
    n = len(GPU_LAGS) * len(GPU_LRS) * len(GPU_SEEDS)
    readme = os.path.join(gdir, "README.md")
    files.write_text_atomic(readme, "\n".join([
        "# The study at GPU/TPU scale (written, not run)",
        "",
        f"- `gsm8k_llama1b_grid.sh OUT`: {n} GRPO runs of Llama-3.2-1B on GSM8K, S ∈ "
        f"{{{', '.join(map(str, GPU_LAGS))}}} × η ∈ {{{', '.join(f'{x:g}' for x in GPU_LRS)}}} × "
        f"{len(GPU_SEEDS)} seeds, {GPU_STEPS} learner steps each (the paper reports "
        "S·η_max ≈ 1.6e-6 at S ∈ {8, 16, 32}).",
        "- `lm_grid.sh`: the LM-testbed grid at full resolution with the population runner.",
        "",
        "Each run writes metrics.jsonl with the collapse step, the realized lags, the drifts and the",
        "consecutive-gradient cosine: the quantities of docs/results.md.",
        ""]))
    return [cmd, lm, readme]


def run(workdir: str, figure: str = "all", scale: str = "cpu") -> None:
    """Runs (or reuses) the stages the figures `figure` need at `scale` into `workdir`, then
    draws the figures and writes the claims table."""
    names = parse_figures(figure)
    os.makedirs(workdir, exist_ok=True)
    if scale == "gpu":
        for p in write_gpu(workdir):
            print(f"wrote {p}")
        return
    stages = stages_for(names, scale) if scale != "draw" else []
    progress = Progress({s.name: float(s.est_s[scale]) for s in stages})
    progress.say(f"{len(stages)} stage(s) for figure(s) {', '.join(names)} into {workdir}")
    for s in stages:
        run_stage(s, scale, workdir, progress)
    loaded = study.load_study(workdir)
    paths = study.draw(loaded, names, os.path.join(workdir, "figures"))
    files.write_text_atomic(os.path.join(workdir, "results.md"), study.claims_markdown(loaded))
    for p in paths:
        print(f"figure: {p}")
    print(f"claims table: {os.path.join(workdir, 'results.md')}")
    progress.say("done")


if __name__ == "__main__":
    _main.run(lambda _, workdir, f: run(workdir, f["figure"], f["scale"]), config=False,
              extra=_flags, workdir_help="Study directory (stages, logs, figures).")
