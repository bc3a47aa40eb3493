"""GRPO as library code: rollouts (`rollout`), the jitted learner step (`step`), the loop (`loop`).

The binaries `experiments/sft.py` and `experiments/train.py` only parse flags and call
`async_grpo.sft.run_sft` / `async_grpo.rl.loop.GRPOTrainer(config, workdir).run()`.
"""
