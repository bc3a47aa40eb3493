r"""Synchronous GRPO (S = 0) from an SFT checkpoint.

  python -m experiments.train --config=experiments/configs/addition.py \
      --workdir=runs/addition/grpo --config.init_from=runs/addition/sft

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb and orbax checkpoints
(params, opt_state, meta) under <workdir>/checkpoints/; rerunning with the same workdir resumes
from the newest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from async_grpo.rl.loop import GRPOTrainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("config:\n%s", _CONFIG.value)
    GRPOTrainer(_CONFIG.value, _WORKDIR.value).run()


if __name__ == "__main__":
    app.run(main)
