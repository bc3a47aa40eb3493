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
    config = run_config.parse(argv, "sft")
    logging.info("config:\n%s", run_config.CONFIG.value)
    try:
        comps = components.build_sft(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    final = run_sft(config, run_config.WORKDIR.value, comps=comps,
                    allow_changed=run_config.ALLOW_CHANGED.value)
    print(f"sft: step {final.get('step', config.sft.steps)}; held-out accuracy "
          f"{final.get('heldout/accuracy', float('nan')):.3f} (sampled "
          f"{final.get('heldout_sampled/accuracy', float('nan')):.3f}); loss "
          f"{final.get('loss', float('nan')):.4f}; {final.get('wall_s', 0.0):.0f} s")


if __name__ == "__main__":
    app.run(main)
