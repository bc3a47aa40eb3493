r"""Three learning-rate schedules on the testbed where GRPO learns, on held-out seeds.

Launch (from the repository root):

  python -m experiments.learn_control --config=experiments/configs/learn_control.py \
      --workdir=runs/study/lm_learn_control          # ~45 minutes on a 2-core CPU
  python -m experiments.learn_control --config=experiments/configs/learn_control.py:quick \
      --workdir=runs/study/lm_learn_control_quick    # a few minutes

The testbed is `sweep_lm.py:learn` (the shipped 28.8 % warm start, T = 200, held-out accuracy
every 20 steps); its grid used seeds 0-4, this comparison seeds 5-9. Three arms, each a sweep
(`experiments.sweep`) into <workdir>/<arm>:

* fixed: S in `lags` x η on a half-octave grid around the learning grid's best η at every S
  (docs/learning_regime.md: 3e-5 at S = 16 … 1.8e-4 at S = 2) x the seeds. The best fixed η per
  S is picked on these same seeds (an oracle: it favours the fixed schedule).
* drift: `async_grpo.lr_control`'s rule at S in `control_lags`, base η = the fixed arm's best η at
  S = 0 (what a user who tuned the synchronous run has), R_batch measured on the fixed arm (the
  median over S >= 1 and seeds of the run-peak within-cycle drift at each S's best η: the drift
  the best fixed schedule runs at), margin `margin`.
* ess: the VCPO baseline (arXiv 2602.17616), η_t = η·(ESS/B)^`ess_power` with ESS/B of the
  step's sequence importance weights, no drift bound, the same base η.
"""

from experiments.configs import sweep_lm


def get_config(arg=None):
    c = sweep_lm.get_config("learn")
    c.run.seed = 5                  # seeds 5 .. 5 + num_seeds - 1: held out from the grid's 0-4
    c.num_seeds = 5
    c.lags = "0,4,8,16"             # the fixed arm's S (S = 0 is the reference)
    c.control_lags = "4,8,16"       # the controllers' S
    c.lr_min, c.lr_max = 2.5e-5, 1.5e-4   # 6 half-octave η: 2.5e-5 … 1.41e-4
    c.lrs_per_octave = 2
    c.margin = 1.0                  # R_batch is a drift the best fixed η runs at, not an edge
    c.ess_power = 0.5               # VCPO's √(ESS/B) for Adam
    c.target = 0.95                 # the moonshot: area at S = 16 / best fixed area at S = 0
    if arg == "quick":              # minutes: S 0 and 4, 2 η, 2 seeds, T = 40
        _small(c, steps=40, every=10, lag=4)
        c.run.eval.num_problems = 125
    elif arg == "tiny":             # seconds (tests): T = 8, a 32-problem evaluation
        _small(c, steps=8, every=2, lag=2)
        c.run.rl.prompts_per_step = 4
        c.run.eval.num_problems = c.run.eval.batch_size = 32
    elif arg not in (None, ""):
        raise ValueError(f"learn_control config argument {arg!r}: use nothing, 'quick' or 'tiny'")
    return c


def _small(c, *, steps, every, lag):
    """A small comparison: T = `steps`, evaluations every `every` steps, S in {0, lag} for the
    fixed arm and {lag} for the controllers, η in {1e-4, 2e-4}, 2 seeds."""
    c.run.rl.steps = steps
    c.eval_every = every
    c.lags, c.control_lags = f"0,{lag}", str(lag)
    c.lr_min, c.lr_max, c.lrs_per_octave = 1e-4, 2e-4, 1
    c.num_seeds = 2
