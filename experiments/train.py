r"""GRPO from an SFT checkpoint, with the staleness policy of config.staleness (async engine).

  python -m experiments.train --config=experiments/configs/addition.py \
      --workdir=runs/addition/grpo --config.init_from=runs/addition/sft \
      [--config.staleness.policy=fixed --config.staleness.max_lag=4]

Several processes (multi-host): start one per host with --coordinator_address=host:port
--num_processes=N --process_id=i (or the ASYNC_GRPO_* / JAX_* environment variables of
async_grpo/distributed.py); each generates its share of every step's prompts.

Writes <workdir>/metrics.jsonl, TensorBoard events under <workdir>/tb and orbax checkpoints
(params, opt_state, meta) under <workdir>/checkpoints/; rerunning with the same workdir resumes
from the newest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from async_grpo import distributed
from async_grpo.rl.loop import GRPOTrainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "Multi-process: the coordinator's host:port.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "Multi-process: number of processes (0: from the environment, else 1).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize(_COORDINATOR.value or None, _NUM_PROCESSES.value or None,
                           _PROCESS_ID.value)
    logging.info("config:\n%s", _CONFIG.value)
    GRPOTrainer(_CONFIG.value, _WORKDIR.value).run()


if __name__ == "__main__":
    app.run(main)
