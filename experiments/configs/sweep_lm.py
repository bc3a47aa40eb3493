r"""The LM-scale staleness grid: (S, η, seed) GRPO runs of a small transformer, one program.

Launch (from the repository root):

  python -m experiments.sweep --config=experiments/configs/sweep_lm.py --workdir=runs/sweep_lm
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:quick \
      --workdir=runs/sweep_lm_quick
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:study \
      --workdir=runs/reproduce/lm_sweep     # the grid of `experiments.reproduce --scale=cpu`
  # docs/results.md's extra LM grids: plain SGD, and long horizons at small Adam steps
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:sgd --workdir=runs/study/lm_sgd
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:small_drift \
      --workdir=runs/study/lm_small_drift
  # correction × law: one grid per variant (grpo, dual_clip, no_kl, tis, total_derivative)
  for v in grpo dual_clip no_kl tis total_derivative; do python -m experiments.sweep \
      --config=experiments/configs/sweep_lm.py:variants_$v --workdir=runs/study/lm_variants/$v \
      --config.run.init_from=runs/reproduce/lm_sweep/sft; done
  # the testbed where GRPO learns (docs/learning_regime.md): from the shipped warm start
  # experiments/data/warm_start_add2_tiny (28.8 % held-out); the full grid and a ~3-minute check
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:learn --workdir=runs/study/lm_learn
  python -m experiments.sweep --config=experiments/configs/sweep_lm.py:learn_quick \
      --workdir=runs/study/lm_learn_quick
  # its time measurement (t_gen, t_learn; docs/learning_regime.md, the wall-clock model)
  python -m bench.async_pipeline --config=bench/async_pipeline_config.py:learn \
      --workdir=runs/study/lm_learn_time
  # the LR controller (R_batch measured on variants_grpo) against fixed η, held-out seeds
  for v in controller controller_fixed; do python -m experiments.sweep \
      --config=experiments/configs/sweep_lm.py:$v --workdir=runs/study/lm_$v \
      --config.run.init_from=runs/reproduce/lm_sweep/sft; done

The run config (`c.run`, a full `async_grpo.config.RunConfig`) is the addition task with the
`tiny` model; every cell starts from one SFT checkpoint (`c.run.init_from`, or an SFT run into
<workdir>/sft when it is empty). The grid: S in `c.lags` (fixed lag), η on a log grid from
`c.lr_min` to `c.lr_max`, `c.num_seeds` seeds (prompts, sampling keys). A cell has collapsed when
the reward EMA falls below half its best for 10 steps after step 20, or anything is non-finite
(`c.run.collapse`). Results and the choices behind these sizes are in docs/lm_grids.md.
"""

from async_grpo import config as config_lib

# The run config of every cell (a plain dict over `RunConfig`'s defaults, so the benchmarks can
# build it without ml_collections: bench/lm_grid.py). Why each size: docs/lm_grids.md ("Sizes,
# and why").
RUN_OVERRIDES = {
    "task": {"name": "addition", "kwargs": {"num_digits": 2}},
    # The tiny model (105 k parameters): ~250 cells x 200 steps fit in 45 CPU minutes.
    "model": {"preset": "tiny", "max_seq_len": 24},
    "eval": {"num_problems": 200, "batch_size": 200, "sampled": False},
    # SFT past the phase transition (a high starting reward; a start inside the transition moves
    # with the CPU's float rounding: docs/reproducibility.md).
    "sft": {"steps": 1000, "batch_size": 64, "eval_every": 0, "optimizer": {"lr": 3e-3}},
    # GRPO: 16 prompts x 8 samples, T = 200 (late collapses near the boundary at large S must
    # fall inside the run), constant η after 5 warm-up steps.
    "rl": {"steps": 200, "prompts_per_step": 16, "group_size": 8, "eval_every": 0,
           "checkpoint_every": 0, "log_ref_kl": True, "optimizer": {"warmup_steps": 5}},
    "staleness": {"policy": "fixed"},
    "collapse": dict(metric="reward", drop_frac=0.5, baseline="zero", ema=0.9, warmup=20,
                     patience=10, max_metric="", max_value=0.0, min_metric="", min_value=0.0,
                     stop=False),
}


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) \
            else v
    return out


def run_dict() -> dict:
    """The default grid's run config as a plain dict (`RunConfig.from_config` parses it)."""
    return _merged(config_lib.RunConfig().to_dict(), RUN_OVERRIDES)


def get_config(arg=None):
    import ml_collections  # pylint: disable=import-outside-toplevel
    c = ml_collections.ConfigDict()
    c.kind = "lm"
    run = ml_collections.ConfigDict(run_dict())
    c.run = run
    c.lags = "0,1,2,4,8,16"
    # Half-octave η grid 3e-5 .. 2.7e-3: stable at the low end and collapsed at the high end
    # for every S (the table's censoring column checks it).
    c.lr_min = 3e-5
    c.lr_max = 3e-3
    c.lrs_per_octave = 2
    c.num_seeds = 3
    c.batching = "vmap"            # vmap: batched cells; map: one after another (bit-identical
                                   # to the pipeline), inside one program either way
    c.eval_every = 0               # k >= 1: held-out accuracy inside the program at steps
                                   # 0, k, ..., T (GridResult.evals); 0: at the end only
    c.memory_budget_gb = 4.0       # device memory for one chunk of cells (see cell_bytes)
    c.max_chunk_cells = 64         # and at most this many cells per chunk
    if arg == "quick":             # ~2 minutes on a 2-core CPU, SFT included
        _grid(c, steps=60, lags="0,8", lrs=(1.2e-4, 4e-3), seeds=2)
    elif arg == "tiny":            # seconds (tests): 2 S x 2 η x 2 seeds, T = 12, SFT 60 steps
        _grid(c, steps=12, lags="0,2", lrs=(2e-3, 4e-3), seeds=2, chunk=4)
        run.sft.steps = 60
        run.eval.num_problems = run.eval.batch_size = 32
    elif arg == "study":           # the CPU-scale study (experiments.reproduce), ~3.5 minutes
        _grid(c, steps=100, lags="0,2,8", lrs=(3e-5, 2e-3), seeds=3)
    elif arg == "sgd":             # the study's SGD grid (plain SGD, gradients clipped at norm 1)
        run.rl.optimizer.name = "sgd"
        run.rl.optimizer.b1 = 0.0
        # (η ≥ 0.06 collapses every cell at every S within 50 steps)
        _grid(c, steps=100, lags="0,2,8", lrs=(1e-3, 0.064), seeds=2)
    elif arg == "small_drift":     # the study's long-horizon grid at small Adam steps
        _grid(c, steps=400, lags="0,2,8", lrs=(3e-5, 5e-4), seeds=2)
    elif arg in VARIANTS:          # the study's correction × law grids, one per variant
        # four S >= 1 (α needs at least three); 84 cells in 2 equal chunks (a short last chunk
        # is padded)
        _grid(c, steps=100, lags="1,2,4,8", lrs=(3e-5, 2e-3), seeds=3, chunk=42)
        VARIANTS[arg](run.rl)
    elif arg in ("controller", "controller_fixed"):
        # The staleness-aware LR controller against fixed η on held-out seeds (3, 4, 5): the
        # variants grid's S and η, R_batch measured on the variants_grpo grid (seeds 0, 1, 2).
        run.seed = 3
        _grid(c, steps=100, lags="1,2,4,8", lrs=(3e-5, 2e-3), seeds=3, chunk=42)
        if arg == "controller":
            c.lr_control = ml_collections.ConfigDict(dict(
                r_batch=0.0, r_batch_from="runs/study/lm_variants/grpo", margin=0.5, r_crit=0.0))
    elif arg in ("learn", "learn_quick", "learn_study"):
        _learn(c, size=arg)
    elif arg not in (None, ""):
        raise ValueError(f"sweep_lm config argument {arg!r}: use nothing, 'quick', 'tiny', "
                         f"'study', 'sgd', 'small_drift', 'controller', 'controller_fixed', "
                         f"'learn', 'learn_quick', 'learn_study' or one of "
                         f"{sorted(VARIANTS)}")
    return c


def _grid(c, *, steps, lags, lrs, seeds, chunk=None):
    """A named grid: T = `steps`, S in `lags`, one η per octave from lrs[0] to lrs[1]."""
    c.run.rl.steps = steps
    c.lags = lags
    c.lr_min, c.lr_max = lrs
    c.lrs_per_octave = 1
    c.num_seeds = seeds
    if chunk is not None:
        c.max_chunk_cells = chunk


# The learning regime's warm start, shipped in the repository (a path relative to the repository
# root; made by `python -m experiments.warm_start --config=experiments/configs/sweep_lm.py:learn
# --workdir=runs/warm_start/add2_tiny --out=experiments/data/warm_start_add2_tiny`).
LEARN_WARM_START = "experiments/data/warm_start_add2_tiny"


def _learn(c, *, size):
    """The testbed where GRPO learns (docs/learning_regime.md): the same task, model, batch and
    loss as the other grids, from a warm start inside SFT's phase transition (step 500 of the
    1000-step SFT above: about 30 % held-out greedy, 20 % sampled, so most groups of 8 hold both
    outcomes), shipped as a file so that every machine starts from the same weights."""
    c.run.init_from = LEARN_WARM_START
    c.warm_start_step = 500          # experiments.warm_start keeps this SFT step
    c.run.eval.num_problems = 500    # held-out greedy accuracy, ±2 points,
    c.run.eval.batch_size = 125      # in 4 batches (a chunk's memory stays the training batch's)
    c.eval_every = 20                # at steps 0, 20, ..., T: the learning curves' fits
    if size == "learn_quick":        # ~3 minutes on a loaded 2-core CPU
        _grid(c, steps=100, lags="0,4", lrs=(1e-4, 2e-4), seeds=1)
    elif size == "learn_study":      # the CPU reproduction's stage (experiments.reproduce):
        # 4 S (three S >= 1, the fewest γ needs) x 4 η one per octave around the S = 0 plateau
        # x 2 seeds, T = 100: 32 cells, a few minutes; claim 6's interval over 2 seeds is wide
        # and η* may sit at the grid's edge (censored): the full grid is `learn`
        _grid(c, steps=100, lags="0,1,4,16", lrs=(2.5e-5, 2e-4), seeds=2)
    else:
        # S x 21 half-octave η (6.25e-6 … 6.4e-3) x 5 seeds = 630 cells. At S = 0 the final
        # accuracy is on a plateau from 2.5e-5 to 1e-4 and falls on both sides (54 % at 6.25e-6,
        # 59 % at 2e-4, 27.5 % at 8e-4, collapse at 1.6e-3); at S = 16, 8e-4 falls to 16 % and
        # 1.6e-3 collapses (docs/learning_regime.md). A grid that stopped at 2.3e-3 left η_max
        # unbracketed (nothing collapsed) at S = 1 and 2 for most seeds; 6.4e-3 is 1.5 octaves
        # above that, so the range brackets the best η and the collapse edge at every S.
        _grid(c, steps=200, lags="0,1,2,4,8,16", lrs=(6.25e-6, 6.5e-3), seeds=5)
        c.lrs_per_octave = 2


def _dual_clip(rl):
    # PPO's min keeps ρ·A unclipped for A < 0 however large ρ is; dual clip caps it at c·A, c = 3.
    rl.loss_kwargs.clip_mode = "dual"


def _no_kl(rl):
    # No KL penalty: its k3 gradient 1 − π_ref/π_θ is unbounded on stale tokens that θ has made
    # unlikely (docs/results.md, claim 1 on the LM testbed).
    rl.loss_kwargs.kl_coef = 0.0


def _tis(rl):
    rl.loss = "tis"              # clipped token ratio times the behavior IS weight capped at 2


def _total_derivative(rl):
    rl.grad_mode = "total_derivative"   # the unbiased ∇J estimate (async_grpo.rl.objectives)


# --config=experiments/configs/sweep_lm.py:variants_<name> --workdir=runs/study/lm_variants/<name>
VARIANTS = {"variants_grpo": lambda rl: None, "variants_dual_clip": _dual_clip,
            "variants_no_kl": _no_kl, "variants_tis": _tis,
            "variants_total_derivative": _total_derivative}
