r"""3-digit addition ("123+456=" -> "579"): short SFT to partial competence, then sync GRPO.

Launch (from the repository root):

  python -m experiments.sft --config=experiments/configs/addition.py --workdir=runs/addition/sft
  python -m experiments.train --config=experiments/configs/addition.py \
      --workdir=runs/addition/grpo --config.init_from=runs/addition/sft

Results with this exact config are in docs/sync_grpo.md.
"""

from experiments.configs import common


def get_config():
    c = common.get_base_config()
    c.task.name = "addition"
    c.task.kwargs = {"num_digits": 3}
    # SFT: 700 steps x 64 fresh problems stops midway through the phase transition of the small
    # model on this task (held-out greedy accuracy ~30%), leaving room for RL.
    c.sft.steps = 700
    c.sft.eval_every = 100
    c.sft.batch_size = 64
    # GRPO: 64 prompts x 8 samples per step, lr 5e-5 constant, k3 KL to the SFT policy (0.04).
    c.rl.steps = 500
    c.rl.prompts_per_step = 64
    c.rl.group_size = 8
    c.rl.eval_every = 50
    c.rl.checkpoint_every = 25        # a shortened run still keeps recent checkpoints
    c.rl.optimizer.lr = 5e-5
    c.rl.loss = "grpo"
    c.rl.loss_kwargs = {"kl_coef": 0.04}
    c.log_every = 1
    return c
