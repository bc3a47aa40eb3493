r"""2-digit multiplication ("12*34=" -> "408").

  python -m experiments.sft --config=experiments/configs/multiplication.py \
      --workdir=runs/multiplication/sft
  python -m experiments.train --config=experiments/configs/multiplication.py \
      --workdir=runs/multiplication/grpo --config.init_from=runs/multiplication/sft

Untuned: the step counts are a starting point, not a reported result.
"""

from experiments.configs import common


def get_config():
    c = common.get_base_config()
    c.task.name = "multiplication"
    c.task.kwargs = {"num_digits": 2}
    c.sft.steps = 1000
    return c
