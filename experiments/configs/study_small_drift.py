r"""Small-drift grids of the scaling-law study (claims of arXiv 2607.01083), on the exact testbed.

The default exact_sweep grid measures η_max only where one update is several times the clip
radius. These grids stay where the per-step update is well below it, in SAMPLED mode (G = 8
responses per prompt from π_φ, so there is sampling noise and a diffusive drift), over long
horizons, and save the traces the analysis needs (J, the consecutive-update cosine, the drifts,
the update norm, the clip fraction; block means over `trace_every` steps). The collapse rule is
causal, so one run of T steps also gives η_max at every shorter horizon T' (collapsed at T' iff
0 <= collapse_step <= T'). Everything else is experiments/configs/exact_sweep.py's default
(linear policy, GRPO + exact KL β = 0.1, fixed lag, float64).

Launch (from the repository root; wall times on the shared 2-core CPU VM):

  # Adam, lr 0.02 … 0.64 (×2), S ∈ {0,1,2,4,8,16}, 3 seeds, T = 10000 (~8 min)
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:adam \
      --workdir=runs/study/small_drift_adam
  # Adam at S = 0, 1, 2 only, lr 0.32 … 1.28, 2 seeds, T = 20000 (~5 min)
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:adam_long \
      --workdir=runs/study/small_drift_adam_long
  # SGD, η 2 … 8 (×√2), S ∈ {0,1,2,4,8,16}, 3 seeds, T = 8000 (~6 min)
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:sgd \
      --workdir=runs/study/small_drift_sgd

  # correction × law (step 3): the loss variants on a shorter small-drift Adam grid, and on the
  # large-drift default grid in sampled mode (η 1 … 128, 3 seeds)
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:adam_variants \
      --workdir=runs/study/variants_small_drift_adam
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:large_variants \
      --workdir=runs/study/variants_large_drift_sampled
  # the population-mode default grid (only variants with an exact population form)
  python -m experiments.exact_sweep --config=experiments/configs/study_small_drift.py:large_population \
      --workdir=runs/study/variants_large_drift_population
"""

from experiments.configs import exact_sweep

TRACES = ("J,cos/consecutive_updates,drift/within_cycle,drift/cumulative,update_norm,"
          "loss/clip_frac")
# Variants without a population form record no population clip fraction: the variant runs keep
# the library's clip fraction on the sample (0 for a loss without a clip) for every variant.
# cos/consecutive_grads (the consecutive cosine of the update directions before Adam) came after
# the two main grids ran; under Adam's β1 = 0.9 cos/consecutive_updates is ≈ 0.9 in every run,
# so cos/consecutive_grads is the one to read.
VARIANT_TRACES = ("J,cos/consecutive_updates,cos/consecutive_grads,drift/within_cycle,"
                  "drift/cumulative,update_norm,clip_frac_sampled,"
                  "cos_used")
# Variants run in step 3. pg = GRPO's token ratio without the clip (token-mean, which equals
# GRPO's seq-mean-token-mean at the testbed's fixed length): "GRPO with clipping off".
# decoupled_ppo is left out: with one update per batch its proximal policy is the current θ_t
# and its gradient is pg's exactly (tests/test_exact.py); add it to see that.
SAMPLED_VARIANTS = "grpo,pg,no_ratio,tis,mis,total_derivative"
POPULATION_VARIANTS = "grpo,pg,no_ratio"
ARGS = ("adam", "adam_long", "sgd", "adam_variants", "large_variants", "large_population")


MODIFIERS = ("study", "tiny")


def get_config(arg="adam"):
    """`arg`: one of ARGS, optionally followed by modifiers: ",study" keeps the study's traces
    (exact_sweep.STUDY_TRACES), ",tiny" also shrinks the grid to a toy one (S ∈ {0,1,4}, 5 η, 2
    seeds, T = 60; for tests and `experiments.reproduce --scale=tiny`), e.g. "adam,tiny"."""
    arg, *mods = (arg or "adam").split(",")
    if arg not in ARGS or any(m not in MODIFIERS for m in mods):
        raise ValueError(f"Unknown study_small_drift config {arg!r} (modifiers {mods}); valid: "
                         f"{list(ARGS)}, each optionally with modifiers {list(MODIFIERS)}.")
    c = _grid(arg)
    if "study" in mods or "tiny" in mods:
        c.keep_metrics = exact_sweep.STUDY_TRACES
    if "tiny" in mods:
        c.lags, c.lr_min, c.lr_max = "0,1,4", 0.08, 1.28
        c.num_seeds, c.train.num_steps, c.trace_every = 2, 60, 1
        c.horizons, c.n_boot = "30,60", 50
    return c


def _grid(arg):
    c = exact_sweep.get_config()
    c.variants = "grpo"
    c.lags = "0,1,2,4,8,16"
    c.train.mode = "sampled"
    c.train.group_size = 8
    c.keep_metrics = TRACES
    c.num_seeds = 3
    c.chunk_size = 128
    if arg in ("adam", "adam_variants"):
        c.train.optimizer = "adam"
        c.lr_min, c.lr_max, c.lrs_per_octave = 0.02, 0.64, 1
        c.train.num_steps, c.trace_every = 10000, 50
        c.horizons = "1250,2500,5000,10000"
        if arg == "adam_variants":
            c.variants = SAMPLED_VARIANTS
            c.keep_metrics = VARIANT_TRACES
            c.lags = "0,1,4,16"
            c.num_seeds = 2
            c.train.num_steps = 5000
            c.horizons = "1250,2500,5000"
            c.n_boot = 500     # 6 variants x 4 fits; the bootstrap dominates the analysis time
    elif arg == "adam_long":           # does S = 0, 1, 2 collapse at all over a long horizon?
        c.train.optimizer = "adam"
        c.lags = "0,1,2"
        c.lr_min, c.lr_max, c.lrs_per_octave = 0.32, 1.28, 1
        c.num_seeds, c.n_boot = 2, 500
        c.train.num_steps, c.trace_every = 20000, 100
        c.keep_metrics = TRACES + ",cos/consecutive_grads"
        c.horizons = "2500,5000,10000,20000"
    elif arg == "sgd":
        c.lr_min, c.lr_max, c.lrs_per_octave = 2.0, 8.0, 2
        c.train.num_steps, c.trace_every = 8000, 50
        c.horizons = "1000,2000,4000,8000"
    elif arg == "large_variants":      # the default grid (SGD, T = 500) in sampled mode, η 1 … 128
        c.variants = SAMPLED_VARIANTS
        c.keep_metrics = VARIANT_TRACES
        c.lr_min, c.lr_max = 1.0, 128.0
        c.n_boot = 500
        c.trace_every = 5
    else:                              # the default population grid, step-3 variants
        c.variants = POPULATION_VARIANTS
        c.train.mode = "population"
        c.trace_every = 5
    return c
