"""The config of bench/async_pipeline.py: `get_config()` the addition task with the bench's
defaults, `get_config("learn")` the learning regime's run config (experiments/configs/sweep_lm.py
:learn), both with the bench's step settings (steps per block, no evaluation or checkpoints,
metrics every step)."""

from experiments.configs import addition


def get_config(arg=None):
    if arg == "learn":
        from experiments.configs import sweep_lm  # pylint: disable=import-outside-toplevel
        c = sweep_lm.get_config("learn").run
        c.rl.optimizer.lr = 5e-5        # the S = 0 plateau's η (the time does not depend on it)
    elif arg in (None, ""):
        c = addition.get_config()
        c.model.preset = "tiny"
        c.rl.prompts_per_step = 32
        c.rl.group_size = 8
    else:
        raise ValueError(f"bench/async_pipeline_config.py argument {arg!r}: nothing or 'learn'")
    c.rl.steps = 20                 # steps per block
    c.rl.eval_every = 0
    c.rl.checkpoint_every = 0
    c.log_every = 1
    return c
