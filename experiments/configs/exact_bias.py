r"""Staleness bias ‖δ‖ = ‖H(θ, φ) − H(θ, θ)‖ vs s·η and vs ‖θ − φ‖ on the exact testbed.

Launch (from the repository root; this config is the default, so --config may be omitted):

  python -m experiments.exact_bias --workdir=runs/exact_bias
  python -m experiments.exact_bias --workdir=runs/exact_bias_mlp --config.testbed.policy=mlp

Same testbed as experiments/configs/exact_sweep.py (linear-softmax policy, GRPO surrogate, exact
KL β=0.1, SGD). Trajectories: fixed lag S ∈ {1,2,4,8} × η ∈ {0.25,…,8} × 2 seeds, T=200 steps,
every step's exact δ recorded. Controlled pairs: θ at 3 points of an on-policy run (init, and after
50 and 200 steps at η=1), φ = θ − r·v for 3 random unit directions v and 41 radii r from 1e-5 to
10. Float64 by default. Results are in docs/exact_testbed.md.
"""

import ml_collections

from experiments.configs import exact_sweep


def get_config(arg=None):
    """`arg`: none, or "tiny" (2 lags, 2 η, 1 seed, 40 steps, 9 radii: seconds, for tests and
    `experiments.reproduce --scale=tiny`)."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"exact_bias config argument {arg!r}: use nothing or 'tiny'")
    c = ml_collections.ConfigDict()
    sweep = exact_sweep.get_config()
    c.testbed = sweep.testbed
    c.loss_kwargs = sweep.loss_kwargs
    c.collapse = sweep.collapse
    c.train = ml_collections.ConfigDict(dict(
        num_steps=200, staleness="fixed", optimizer="sgd", b1=0.0, b2=0.999, opt_eps=1e-8))
    c.traj_lags = "1,2,4,8"
    c.traj_lrs = "0.25,0.5,1,2,4,8"
    c.traj_seeds = 2
    c.anchor_lr = 1.0            # on-policy run that provides the controlled-pair anchors θ.
    c.anchor_steps = "0,50,200"
    c.num_directions = 3
    c.r_min = 1e-5
    c.r_max = 10.0
    c.num_radii = 41
    c.linear_tol = 0.1           # linearity "breaks" where ‖δ‖/(slope·x) leaves [1 − tol, 1 + tol].
    c.x64 = True
    if arg == "tiny":
        c.traj_lags, c.traj_lrs, c.traj_seeds = "1,4", "0.5,4", 1
        c.train.num_steps, c.anchor_steps = 40, "0,10"
        c.num_directions, c.num_radii = 1, 9
    return c
