r"""String reversal of 3-8 lowercase letters ("rev:abcde=" -> "edcba").

  python -m experiments.sft --config=experiments/configs/reverse.py --workdir=runs/reverse/sft
  python -m experiments.train --config=experiments/configs/reverse.py \
      --workdir=runs/reverse/grpo --config.init_from=runs/reverse/sft

Untuned: the step counts are a starting point, not a reported result.
"""

from experiments.configs import common


def get_config():
    c = common.get_base_config()
    c.task.name = "reverse"
    c.task.kwargs = {"min_len": 3, "max_len": 8}
    c.sft.steps = 300
    return c
