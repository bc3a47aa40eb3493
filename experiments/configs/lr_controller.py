r"""Staleness-aware learning-rate controller vs the best fixed η on the exact testbed.

Launch (from the repository root; this config is the default of the binary):

  python -m experiments.lr_controller --workdir=runs/controller
  python -m experiments.lr_controller --workdir=runs/controller_sampled --config.train.mode=sampled
  # the controller at every η of the grid (a controlled stability map):
  python -m experiments.lr_controller --workdir=runs/controller_map --config.controller.base_lrs=grid

The testbed, surrogate ("grpo"), optimizer, horizon, collapse rules, S grid and η grid are those
of experiments/configs/exact_sweep.py (the default stability map). Two stages:

1. Calibration (seeds `calib_seeds`, the default sweep's 0..4): the fixed-η grid with the
   within-cycle drift kept; R_batch is measured from it (experiments/lr_controller.py,
   `estimate_r_batch`) unless `controller.r_batch` is set.
2. Evaluation on held-out seeds (`eval_seeds`): the fixed-η grid again, and the controller
   (`async_grpo.lr_control`, modes `controller.modes`) with base η in `controller.base_lrs`,
   margins m in `controller.margins` and R_crit (0 = no cumulative bound).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs import exact_sweep


def get_config():
    c = exact_sweep.get_config()
    c.variants = "grpo"
    c.num_seeds = 5            # calibration seeds 0..num_seeds−1 (those of the default sweep)
    c.eval_seeds = "5,6,7"     # held-out seeds of the comparison
    c.k_steps = 50             # report J after k steps (reward per step) besides mean and final J
    c.controller = ml_collections.ConfigDict({
        "r_batch": placeholder(float),   # None: measured by the calibration stage
        "margins": "0.25,0.5,1",         # margin m (comma-separated: one set of runs each)
        "r_crit": 0.0,
        "modes": "rule,lookahead",       # async_grpo.lr_control: rule (0) / lookahead (1)
        "base_lrs": "16,512",            # base η of the controlled runs; "grid": every grid η
    })
    return c
