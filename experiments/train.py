r"""GRPO from an SFT checkpoint, with the staleness policy of config.staleness.

  python -m experiments.train --config=experiments/configs/addition.py \
      --workdir=runs/addition/grpo --config.init_from=runs/addition/sft \
      [--config.staleness.policy=fixed --config.staleness.max_lag=4]
  python -m experiments.train --config=experiments/configs/addition.py --print_config

Several processes (multi-host): start one per host with --coordinator_address=host:port
--num_processes=N --process_id=i (or the ASYNC_GRPO_* / JAX_* environment variables of
async_grpo/distributed.py); each generates its share of every step's prompts.

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb and orbax checkpoints
(params, opt_state, aux, history, meta) under <workdir>/checkpoints/; rerunning with the same
workdir resumes from the newest checkpoint.
"""

from absl import app, flags, logging

from async_grpo import distributed
from async_grpo.rl import components, pipeline
from experiments import run_config

_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "Multi-process: the coordinator's host:port.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "Multi-process: number of processes (0: from the environment, else 1).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id.")


def main(argv):
    # Before anything touches a JAX backend (the workdir check asks for the process index).
    distributed.initialize(_COORDINATOR.value or None, _NUM_PROCESSES.value or None,
                           _PROCESS_ID.value)
    config = run_config.parse(argv, "grpo")
    logging.info("config:\n%s", run_config.CONFIG.value)
    try:
        comps = components.build_grpo(config)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    result = pipeline.run(config, comps, run_config.WORKDIR.value,
                          allow_changed=run_config.ALLOW_CHANGED.value)
    print(f"grpo: {result.summary()}")


if __name__ == "__main__":
    app.run(main)
