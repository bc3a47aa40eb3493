r"""Supervised warm start of a policy from scratch on a task's reference answers.

  python -m experiments.sft --config=experiments/configs/addition.py --workdir=runs/addition/sft

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb and the orbax checkpoint
<workdir>/checkpoints/<step>/ that experiments/train.py loads via --config.init_from=<workdir>.
"""

from absl import app, logging

from async_grpo.rl import components
from async_grpo.sft import run_sft
from experiments import run_config


def main(argv):
    config = run_config.parse(argv)
    logging.info("config:\n%s", run_config.CONFIG.value)
    try:
        comps = components.build_sft(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    run_sft(config, run_config.WORKDIR.value, comps=comps)


if __name__ == "__main__":
    app.run(main)
