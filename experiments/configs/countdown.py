r"""Countdown with 3 numbers in 1..20, target in 1..100 ("3,5,7>22=" -> "3*5+7").

  python -m experiments.sft --config=experiments/configs/countdown.py --workdir=runs/countdown/sft
  python -m experiments.train --config=experiments/configs/countdown.py \
      --workdir=runs/countdown/grpo --config.init_from=runs/countdown/sft

Untuned: the step counts are a starting point, not a reported result.
"""

from experiments.configs import common


def get_config():
    c = common.get_base_config()
    c.task.name = "countdown"
    c.task.kwargs = {"num_numbers": 3, "max_number": 20, "max_target": 100}
    c.sft.steps = 1000
    return c
