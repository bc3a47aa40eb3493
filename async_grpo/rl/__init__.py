"""GRPO as library code, one way: components → learner / rollouts → pipeline.

* `components`: builds the task, tokenizer, model, optimizer, objective, rollout source and
  evaluator from a `RunConfig` (`build_grpo`, `build_sft`).
* `objectives`: what the learner differentiates (`GRPOObjective`, `SFTObjective`) and the
  staleness-bias diagnostic.
* `rollout`: sampling + rewards (`Rollouts`), the data schedule (`RolloutSource`), evaluation.
* `learner`: the one optimizer `update`, jitted on a mesh with donation (`Learner`).
* `pipeline`: the loop, `run(config, components, workdir)`: generator thread, learner,
  diagnostics, collapse, checkpoints and resume.

The binaries `experiments/sft.py` and `experiments/train.py` parse flags into a `RunConfig` and
call `async_grpo.sft.run_sft` / `pipeline.run(config, components.build_grpo(config), workdir)`.
"""
