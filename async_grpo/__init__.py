"""async_grpo: JAX research code for asynchronous GRPO under rollout staleness.

Modules (import them directly; nothing heavy is imported here). Imports go one way:
binaries → rl.pipeline / sft → rl.learner, generator, rl.rollout, rl.components → losses,
models, tasks, staleness, collapse, config.

  losses       pure, model-agnostic GRPO-family losses (a package of small stages), advantages,
               KL estimators and the total-derivative surrogate, with a registry (`make_loss`).
  staleness    the one staleness vocabulary: which version generates each step's batch, as a
               jittable schedule and as the policies of the threaded pipeline.
  collapse     the one collapse definition: configurable rules over a metric trace (jittable).
  simulate     the generic stale-gradient simulator: any h(θ, φ), objective, optimizer and lag
               schedule; a whole (η, seed, S, …) grid as one compiled program.
  testbeds     exact (enumerable) policies where J(θ), H(θ, φ) and ∇J are exact sums.
  config       the typed run config (`RunConfig`): every default once, every value checked.
  models       the Llama-style Flax NNX policy family with pure apply functions on split state.
  sampling     the jitted KV-cache sampler with exact behavior log-probs.
  tasks        procedurally generated verifiable tasks, a character tokenizer, a GSM8K loader.
  generator    the host-side rollout generator thread and the versioned parameter store.
  sharding     device meshes from config and logical-axis sharding rules.
  rl           components, objectives, rollouts, the learner (the one update) and the pipeline.
  sft          the supervised warm start (through the same learner).
  metrics      JSONL + TensorBoard metric streams and the progress line.
  checkpoint   Orbax checkpoint helpers (atomic, keep-N).
  diagnostics  lag statistics and the cosine of two pytrees.
  files        atomic file writes.
  distributed  multi-process initialisation, per-process shares, global arrays.
"""

__version__ = "0.1.0"
