"""async_grpo: JAX research code for asynchronous GRPO under rollout staleness.

Modules (import them directly; nothing heavy is imported here):
  losses     pure, model-agnostic GRPO-family losses, advantages and the total-derivative
             surrogate, with a registry of named variants (`losses.make_loss`).
  testbeds   exact (enumerable) policies where J(θ), H(θ, φ) and ∇J are exact sums.
  models     the Llama-style Flax NNX policy family with pure apply functions on split state.
  sampling   the jitted KV-cache sampler with exact behavior log-probs.
  tasks      procedurally generated verifiable tasks, a character tokenizer, a GSM8K loader.
"""

__version__ = "0.1.0"
