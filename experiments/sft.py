r"""Supervised warm start of a policy from scratch on a task's reference answers.

  python -m experiments.sft --config=experiments/configs/addition.py --workdir=runs/addition/sft

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb and the orbax checkpoint
<workdir>/checkpoints/<step>/ that experiments/train.py loads via --config.init_from=<workdir>.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from async_grpo.sft import run_sft

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("config:\n%s", _CONFIG.value)
    run_sft(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
