r"""Delayed gradient descent on a quadratic: the stale-gradient simulator on a model problem.

Launch (from the repository root; this config is the default, so --config may be omitted):

  python -m experiments.delayed_quadratic --workdir=runs/delayed_quadratic
  python -m experiments.delayed_quadratic --workdir=runs/dq_noisy --config.noise=0.1

f(θ) = ½ Σ_i λ_i θ_i², the learner applies the gradient at the stale iterate, h(θ, φ) = ∇f(φ),
with plain SGD and the `fixed` lag S. The recurrence θ_{t+1} = θ_t − ηλ θ_{t−S} is stable iff
ηλ < 2 cos(Sπ/(2S+1)) (a classical result for linear delay-difference equations), so
η_max(S) = 2 cos(Sπ/(2S+1)) / λ_max ≈ π/(2 λ_max S) for large S: the 1/S law. The binary
measures η_max on a log grid and prints it beside the exact value. docs/simulator.md walks
through it.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.curvatures = "1.0,0.25"      # λ_i, comma-separated (the dimension of θ)
    c.noise = 0.0                  # std of Gaussian noise added to h (a sampled update)
    c.lags = "0,1,2,4,8,16"
    c.lr_min = 0.05
    c.lr_max = 4.0
    c.num_lrs = 80                 # log-spaced
    c.num_seeds = 3                # seeds draw θ_0 ~ N(0, I) (and the noise)
    c.num_steps = 2000
    # async_grpo.collapse.CollapseRules on J = −f(θ).
    c.collapse = ml_collections.ConfigDict(dict(
        metric="J", drop_frac=0.5, baseline="init", ema=0.0, warmup=20, patience=20))
    return c
