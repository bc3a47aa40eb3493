#!/usr/bin/env bash
# Runs every experiment whose numbers appear in docs/, into RUNS (default runs/), then
# regenerates the docs' result tables from those directories:
#
#   bash experiments/reproduce_docs.sh [RUNS]        # about 3 hours on 2 CPU cores
#   python -m experiments.report --runs=RUNS         # (run by the script at the end)
#
# Each command resumes or is skipped when its results exist (the binaries refuse a workdir that
# holds a different config). The ISA runs repeat two experiments with XLA restricted to AVX2 and
# SSE4.2, to measure how much the CPU's numerics move the results (docs/reproducibility.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
PY=${PYTHON:-.venv/bin/python}
# Sweeps always run: a finished one reuses its saved chunks and only refits (seconds), so a
# change to the analysis (async_grpo.scaling) reaches the docs.
sweep() { local dir=$1; shift; $PY -m experiments.exact_sweep --workdir="$RUNS/$dir" "$@"; }

# Exact testbed (docs/exact_testbed.md).
sweep exact_sweep
[ -f "$RUNS/exact_bias/bias.json" ] || $PY -m experiments.exact_bias --workdir="$RUNS/exact_bias"
sweep exact_sweep_mlp_low --config.testbed.policy=mlp --config.lr_min=0.0625 --config.lr_max=64
sweep exact_sweep_tabular_wide --config.testbed.policy=tabular --config.lr_min=1 --config.lr_max=1048576 --config.lrs_per_octave=1
sweep exact_sweep_adam --config.train.optimizer=adam --config.lr_min=0.004 --config.lr_max=8
sweep exact_sweep_sync --config.train.staleness=sync_interval
sweep exact_sweep_T2000 --config.train.num_steps=2000
sweep exact_sweep_nokl --config.testbed.kl_coef=0.0
sweep exact_sweep_sampled --config.train.mode=sampled --config.variants=grpo
sweep exact_sweep_delayed --config.train.mode=delayed --config.variants=grpo
[ -f "$RUNS/exact_group_bias/results.json" ] || $PY -m experiments.exact_group_bias --workdir="$RUNS/exact_group_bias"
# The staleness-aware learning-rate controller (docs/lr_controller.md).
for args in "controller" "controller_confirm --config.eval_seeds=8,9,10,11,12" \
            "controller_sampled --config.train.mode=sampled" \
            "controller_map --config.controller.base_lrs=grid --config.controller.modes=rule --config.controller.margins=0.25,0.5"; do
  set -- $args; dir=$1; shift
  [ -f "$RUNS/$dir/summary.json" ] || $PY -m experiments.lr_controller --workdir="$RUNS/$dir" "$@"
done

# SFT and GRPO on addition (docs/sync_grpo.md), the staleness curves (docs/pipeline.md).
CFG=experiments/configs/addition.py
$PY -m experiments.sft --config=$CFG --workdir="$RUNS/addition/sft"
$PY -m experiments.train --config=$CFG --workdir="$RUNS/addition/grpo" --config.init_from="$RUNS/addition/sft"
for S in 0 2 8; do P=fixed; [ $S = 0 ] && P=sync
  $PY -m experiments.train --config=$CFG --workdir="$RUNS/stale/S$S" --config.init_from="$RUNS/addition/sft" \
    --config.rl.steps=150 --config.rl.prompts_per_step=32 --config.rl.eval_every=50 \
    --config.staleness.policy=$P --config.staleness.max_lag=$S
done
$PY -m experiments.plot_staleness --out="$RUNS/stale/curves.png" "$RUNS/stale/S0" "$RUNS/stale/S2" "$RUNS/stale/S8"

# The sampler's log-prob parity, float32 and bf16 (docs/benchmarks.md, "The sampler").
[ -f "$RUNS/parity/parity.json" ] || $PY -m bench.logprob_parity --init_from="$RUNS/addition/sft" --workdir="$RUNS/parity"
[ -f "$RUNS/parity_random/parity.json" ] || $PY -m bench.logprob_parity --workdir="$RUNS/parity_random" --max_new_tokens=20

# The same code with XLA restricted to other instruction sets (docs/reproducibility.md).
# The exact sweep in float32 (the precision of the re-check) natively and under two instruction
# sets, then in float64 (the default) under the same two.
sweep f32/exact_sweep --config.x64=False
for ISA in AVX2 SSE4_2; do
  XLA_FLAGS=--xla_cpu_max_isa=$ISA sweep isa_$ISA/exact_sweep --config.x64=False
  XLA_FLAGS=--xla_cpu_max_isa=$ISA sweep isa_$ISA/exact_sweep_x64
  XLA_FLAGS=--xla_cpu_max_isa=$ISA $PY -m experiments.sft --config=$CFG --workdir="$RUNS/isa_$ISA/sft"
done

# The LM staleness grid (docs/lm_grids.md): the quick and the default config.
for V in :quick ""; do D=sweep_lm${V/:/_}
  $PY -m experiments.sweep --config=experiments/configs/sweep_lm.py$V --workdir="$RUNS/$D"
done

# The study (docs/results.md): the CPU-scale reproduction, its figures copied into docs/, and the
# extra small-drift grids of the claims table (experiments/configs/study_small_drift.py).
$PY -m experiments.reproduce --figure=all --scale=cpu --workdir="$RUNS/reproduce"
mkdir -p docs/figures/study && cp "$RUNS"/reproduce/figures/fig*.png docs/figures/study/
for V in adam sgd; do
  $PY -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:$V --workdir="$RUNS/study/small_drift_$V"
done
for V in adam_variants:variants_small_drift_adam large_variants:variants_large_drift_sampled large_population:variants_large_drift_population; do
  $PY -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:${V%%:*} --workdir="$RUNS/study/${V##*:}"
done
for V in small_drift sgd; do
  $PY -m experiments.sweep --config=experiments/configs/sweep_lm.py:$V --workdir="$RUNS/study/lm_$V"
done
# LM correction × law and the LM learning-rate controller (both from the reproduction's SFT
# checkpoint).
SFT="$RUNS/reproduce/lm_sweep/sft"
for V in grpo dual_clip no_kl tis total_derivative; do
  $PY -m experiments.sweep --config=experiments/configs/sweep_lm.py:variants_$V \
    --workdir="$RUNS/study/lm_variants/$V" --config.run.init_from="$SFT"
done
for V in controller_fixed controller; do
  $PY -m experiments.sweep --config=experiments/configs/sweep_lm.py:$V --workdir="$RUNS/study/lm_$V" \
    --config.run.init_from="$SFT" \
    $([ $V = controller ] && echo --config.lr_control.r_batch_from="$RUNS/study/lm_variants/grpo")
done

# The learning regime (docs/learning_regime.md): the full grid (about two hours), its step timed
# (an idle machine), Figures 7-10 drawn from both into docs/figures/learning/.
$PY -m experiments.sweep --config=experiments/configs/sweep_lm.py:learn --workdir="$RUNS/study/lm_learn"
[ -f "$RUNS/study/lm_learn_time/async_pipeline.json" ] || $PY -m bench.async_pipeline \
  --config=bench/async_pipeline_config.py:learn --workdir="$RUNS/study/lm_learn_time"
# Three LR schedules on it, on held-out seeds (about 45 minutes): Figure 11.
$PY -m experiments.learn_control --config=experiments/configs/learn_control.py \
  --workdir="$RUNS/study/lm_learn_control"
$PY -m experiments.reproduce --scale=draw --figure=7,8,9,10,11 --workdir="$RUNS/study"
mkdir -p docs/figures/learning && cp "$RUNS"/study/figures/fig{7,8,9,10,11}_*.png docs/figures/learning/

# Benchmarks last (timings: run them on an otherwise idle machine).
[ -f "$RUNS/bench_exact_grid/bench.json" ] || $PY -m bench.exact_grid --workdir="$RUNS/bench_exact_grid"
mkdir -p "$RUNS/bench"
[ -f "$RUNS/bench/lm_grid.json" ] || $PY -m bench.lm_grid --json_out="$RUNS/bench/lm_grid.json"
# CPU sampler throughput of the code before the sampler work (commit 11ccd5c) and now, interleaved.
if [ ! -d "$RUNS/bench_cpu/after" ]; then
  PYABS="$(cd "$(dirname "$(command -v "$PY")")" && pwd)/$(basename "$PY")"
  BASE=$(mktemp -d); git archive 11ccd5c | tar -x -C "$BASE"
  mkdir -p "$RUNS/bench_cpu/before" "$RUNS/bench_cpu/after"
  for i in 1 2; do
    (cd "$BASE" && "$PYABS" bench/model_throughput.py --skip_learner --sample_repeats=3) \
      > "$RUNS/bench_cpu/before/model_throughput_$i.txt" 2>&1
    $PY bench/model_throughput.py --skip_learner --sample_repeats=3 \
      > "$RUNS/bench_cpu/after/model_throughput_$i.txt" 2>&1
  done
fi
# GSM8K configs by the memory plan at their shapes (docs/benchmarks.md, "GSM8K configs").
for S in 8 32; do
  [ -f "$RUNS/memory_plan_gsm8k/gsm8k_llama_S$S.json" ] || $PY -m bench.memory_plan \
    $($PY -m experiments.configs.gsm8k_llama $S) --out="$RUNS/memory_plan_gsm8k/gsm8k_llama_S$S.json"
done
# The GPU check's path at toy shapes (docs/benchmarks.md, "The GPU check"): with this venv's
# python3, and with .venv312 (the GPU machine's stack) when it exists.
[ -f "$RUNS/gpu_check_tiny/py311/check.json" ] || PATH="$(dirname "$PY"):$PATH" \
  bash gpu/check.sh "$RUNS/gpu_check_tiny/py311" --tiny
if [ -x .venv312/bin/python3 ] && [ ! -f "$RUNS/gpu_check_tiny/py312/check.json" ]; then
  PATH="$PWD/.venv312/bin:$PATH" bash gpu/check.sh "$RUNS/gpu_check_tiny/py312" --tiny
fi

$PY -m experiments.report --runs="$RUNS"
