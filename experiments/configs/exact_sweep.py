r"""(S, η, seed) stability map on the exact testbed (async_grpo/testbeds/exact.py).

Launch (from the repository root; this config is the default, so --config may be omitted):

  python -m experiments.exact_sweep --workdir=runs/exact_sweep

  # other policy families / optimizers / staleness models / variants:
  python -m experiments.exact_sweep --workdir=runs/exact_sweep_mlp --config.testbed.policy=mlp
  python -m experiments.exact_sweep --workdir=runs/exact_sweep_adam --config.train.optimizer=adam \
      --config.lr_min=0.005 --config.lr_max=8
  python -m experiments.exact_sweep --workdir=runs/exact_sweep_sync \
      --config.train.staleness=sync_interval

Default: linear-softmax policy over fixed random features (8 prompts, V=4, L=3, 64 responses per
prompt, partial-credit reward), the registered "grpo" surrogate (token ratio, PPO clip 0.2, group
mean/std advantages) plus an exact KL(π_θ‖π_θ0) penalty β=0.1, population-mode H, SGD, fixed lag
S ∈ {0,1,2,4,8,16}, 21 η on a 2^(1/2) log grid from 0.5 to 512, 5 seeds, T=500 steps, run for two
variants: "grpo" and the ratio-free "no_ratio" variant (a partly delayed stale policy gradient),
in float64. Results and the numbers this config produced are in docs/exact_testbed.md.
"""

import ml_collections
from ml_collections.config_dict import placeholder


# The per-step traces the study's figures and regime table read (experiments.reproduce).
STUDY_TRACES = ("J,cos/consecutive_updates,cos/consecutive_grads,drift/within_cycle,"
                "drift/cumulative,update_norm,loss/clip_frac")


def get_config(arg=None):
    """`arg`: none (the grid above), "study" (it, keeping the study's traces) or "tiny" (the
    study's traces on a toy grid: S ∈ {0,1,4}, 7 η, 2 seeds, T = 60; seconds, for tests and
    `experiments.reproduce --scale=tiny`)."""
    if arg not in (None, "", "study", "tiny"):
        raise ValueError(f"exact_sweep config argument {arg!r}: use nothing, 'study' or 'tiny'")
    c = ml_collections.ConfigDict()
    c.testbed = ml_collections.ConfigDict(dict(
        num_prompts=8, vocab_size=4, seq_len=3, policy="linear", feature_dim=16, hidden_dim=32,
        feature_seed=0, init_scale=0.5, reward="partial", reward_seed=0, sum_modulus=0,
        kl_coef=0.1))
    # Overrides of the variants' surrogate settings (async_grpo.losses.loss_config), applied to
    # every variant; unset (None) fields keep each variant's own default.
    c.loss_kwargs = ml_collections.ConfigDict({
        "clip_eps": placeholder(float), "clip_eps_high": placeholder(float),
        "std_normalize": placeholder(bool), "adv_eps": placeholder(float),
        "std_ddof": placeholder(int)})
    c.train = ml_collections.ConfigDict(dict(
        num_steps=500, staleness="fixed", geometric_p=0.5, optimizer="sgd", b2=0.999,
        opt_eps=1e-8, mode="population", group_size=8))
    # async_grpo.collapse.CollapseRules: J below J_0 + 0.5 (best − J_0) for 20 consecutive steps
    # after step 20 (or non-finite).
    c.collapse = ml_collections.ConfigDict(dict(
        metric="J", drop_frac=0.5, baseline="init", ema=0.0, warmup=20, patience=20))
    # Comma-separated registered loss variants (async_grpo.losses.list_losses() with an exact
    # population form: grpo, dapo, dr_grpo, gspo, pg, rloo, no_ratio).
    c.variants = "grpo,no_ratio"
    c.lags = "0,1,2,4,8,16"
    c.lr_min = 0.5
    c.lr_max = 512.0
    c.lrs_per_octave = 2
    c.num_seeds = 5
    c.b1s = ""                 # SGD momentum / Adam β1, comma-separated (a grid axis); "" = 0 for
                               # SGD, 0.9 for Adam.
    # Per-step traces saved in the chunk files (comma-separated metric names of
    # async_grpo.simulate / exact.update_fn; J is always kept), e.g.
    # "J,cos/consecutive_updates,drift/within_cycle,drift/cumulative,update_norm,loss/clip_frac"
    # (the last three also give the
    # regime table). trace_every = k > 1 saves block means over k steps (k must divide T).
    c.keep_metrics = "J"
    c.trace_every = 1
    # Comma-separated shorter horizons T' <= T at which η_max and α are also reported (one run
    # gives them all: the collapse rule is causal). Analysis only: not part of the fingerprint.
    c.horizons = ""
    c.chunk_size = 128         # cells per compiled chunk; finished chunks are saved and reused.
    # Float64 by default: in float32 the cells at the stability edge are chaotic, so the CPU's
    # instruction set (the order of float32 reductions) moves η_max by a grid step and α by ~0.1
    # (docs/reproducibility.md); float64 costs little on a CPU. --config.x64=False for float32.
    c.x64 = True
    c.n_boot = 2000
    if arg in ("study", "tiny"):
        c.keep_metrics = STUDY_TRACES
    if arg == "tiny":
        c.lags, c.lr_min, c.lr_max, c.lrs_per_octave = "0,1,4", 4.0, 256.0, 1
        c.num_seeds, c.train.num_steps, c.n_boot = 2, 60, 50
    return c
