"""async_grpo: JAX research code for asynchronous GRPO under rollout staleness.

Modules (import them directly; nothing heavy is imported here):
  losses       pure, model-agnostic GRPO-family losses, advantages, KL estimators and the
               total-derivative surrogate, with a registry of named variants (`make_loss`).
  testbeds     exact (enumerable) policies where J(θ), H(θ, φ) and ∇J are exact sums.
  models       the Llama-style Flax NNX policy family with pure apply functions on split state.
  sampling     the jitted KV-cache sampler with exact behavior log-probs.
  tasks        procedurally generated verifiable tasks, a character tokenizer, a GSM8K loader.
  staleness    staleness policies: which parameter version generates each learner step's batch.
  generator    the host-side rollout generator thread and the versioned parameter store.
  sharding     device meshes from config and logical-axis sharding rules.
  rl           rollouts, the jitted learner step, the trainer loop and the async engine.
  sft          the supervised warm start.
  metrics      JSONL + TensorBoard metric streams and the progress line.
  checkpoint   Orbax checkpoint helpers (atomic, keep-N).
  diagnostics  lag statistics and the collapse detector.
"""

__version__ = "0.1.0"
