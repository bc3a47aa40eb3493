r"""The staleness bias ‖δ‖ = ‖H(θ, φ) − H(θ, θ)‖ on the LM testbed, with the noise floor removed.

Launch (from the repository root):

  python -m experiments.lm_bias --config=experiments/configs/lm_bias.py --workdir=runs/lm_bias \
      --config.run.init_from=runs/reproduce/lm_sweep/sft
  python -m experiments.lm_bias --config=experiments/configs/lm_bias.py:tiny --workdir=/tmp/lmb

The run config is the LM grid's (experiments/configs/sweep_lm.py:study: the tiny model on
2-digit addition, 16 prompts × 8 samples, Adam, GRPO with KL 0.04), started from its SFT
checkpoint (`run.init_from`; empty: an SFT run into <workdir>/sft). For each η in `lrs` a
synchronous GRPO trajectory θ_0 … θ_T is trained (no warm-up, so s·η is exactly the nominal step
budget between θ_{t−s} and θ_t), and at every anchor step t and lag s the bias is measured on
`replicates` independent pairs of batches of the same prompts, one sampled from φ = θ_{t−s} and
one from θ_t, both differentiated at θ_t (`experiments.lm_bias`). Lag 0 pairs two fresh batches
at θ_t: the noise-floor control, whose bias is 0 by construction.
"""

import ml_collections

from experiments.configs import sweep_lm


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    run = sweep_lm.get_config("study").run
    run.rl.optimizer.warmup_steps = 0
    c.run = run
    c.lrs = "3e-5,1e-4,3e-4,1e-3"   # the LM grid's η range (docs: calibration 3e-5 … 1e-3)
    c.lags = "1,2,4,8,16"
    c.anchor_steps = "20,40"        # θ_t at which δ is measured (t ≥ max lag)
    c.replicates = 32               # independent batch pairs per (η, t, s)
    c.couple = True                 # a pair's two batches share their sampling key (CRN)
    c.clip_small = 0.05             # "small drift": under 5 % of stale tokens clipped at θ_t
                                    # (the study's CLIP_BINDING, experiments/study.py)
    if arg == "tiny":               # seconds: for tests and for trying the binary
        run.sft.steps = 150
        run.sft.batch_size = 32
        run.eval.num_problems = 16
        run.eval.batch_size = 16
        run.rl.prompts_per_step = 4
        c.lrs = "1e-3,4e-3"
        c.lags = "1,4"
        c.anchor_steps = "4"
        c.replicates = 4
    elif arg not in (None, ""):
        raise ValueError(f"lm_bias config argument {arg!r}: use nothing or 'tiny'")
    return c
