r"""GRPO on GSM8K from a Hugging Face Llama-3.x checkpoint on your own GPU (the paper's setting).

Nothing is downloaded: point the config at local files (the checkpoint directory holds
config.json, *.safetensors and tokenizer.json; GSM8K as {"question", "answer"} JSONL):

  python -m experiments.train --config=experiments/configs/gsm8k_llama.py \
      --workdir=runs/gsm8k_llama/S8_lr1e-6 \
      --config.model.hf_path=/path/to/Llama-3.2-1B-Instruct \
      --config.task.path=/path/to/gsm8k/train.jsonl \
      --config.staleness.max_lag=8 --config.rl.optimizer.lr=1e-6

GRPO starts from the checkpoint's weights (no init_from). To warm-start a base model with SFT on
the reference answers first: `python -m experiments.sft` with the same flags and
--workdir=runs/gsm8k_llama/sft, then add --config.init_from=runs/gsm8k_llama/sft to the train
command. The paper's grid (fixed staleness S in {8, 16, 32} x Adam learning rate in
[1e-7, 1e-6]) is `SWEEP` below, one run per cell:

  for S in 8 16 32; do for lr in 1e-7 3e-7 1e-6; do
    python -m experiments.train --config=experiments/configs/gsm8k_llama.py \
        --workdir=runs/gsm8k_llama/S${S}_lr${lr} --config.model.hf_path=$MODEL \
        --config.task.path=$GSM8K --config.staleness.max_lag=$S --config.rl.optimizer.lr=$lr
  done; done

Memory: one GPU, an 80 GB card or an H200, at every S of the grid (S = 8 … 32), by
`bench/memory_plan.py` at this config's shapes (`memory_plan_flags(S)` below; the numbers and
the command are in docs/benchmarks.md, "GSM8K configs"). What it takes, and its cost:
- the learner batch of 64 prompts × 8 samples = 512 sequences runs as 256 exact micro-batches of
  2 rows (`learner.micro_batches`; one extra forward pass per step, and 2 × (P + 512) tokens
  per matmul instead of 512 × (P + 512)), with the log-probs 128 positions at a time
  (`learner.logits_chunk`: the full float32 logits [512, 512, 128256] alone would be 134 GB)
  and every decoder block rematerialised (`remat="full"`: about one more forward pass);
- cuDNN attention (`attention_impl="cudnn"`, `is_causal`, prompt widths padded to a multiple
  of 64), bf16 compute, float32 master parameters and Adam state (15 GB);
- the S + 1 behaviour snapshots in bf16 in pinned host memory (2.5 GB each: 82 GB of host RAM
  at S = 32), one on the GPU while it samples (`precision.snapshot_memory="host"`; each batch
  copies one snapshot host → device);
- no cosine diagnostics (2 float32 copies, 10 GB) and no θ_ref (kl_coef = 0, log_ref_kl off).
The plan was compiled by XLA:CPU (no GPU was available; XLA:GPU's buffers differ), with the
longest prompt assumed ≤ 384 tokens (P = 384); a longer one adds to the sampler's KV cache
(39 MB per prompt token) and to the learner's activations. Llama-3.2-3B needs a mesh over
several GPUs (--config.mesh.axes=data=1,fsdp=-1,tensor=1).
"""

from experiments.configs import common

# The paper's grid over this config: fixed staleness S and the Adam learning rate.
SWEEP = {"staleness.max_lag": [8, 16, 32], "rl.optimizer.lr": [1e-7, 3e-7, 1e-6]}


def get_config():
    c = common.get_base_config()
    c.task.name = "gsm8k"
    c.task.kwargs = {"fallback_last_number": True}   # instruct models rarely write "####"
    c.task.path = ""                                  # set --config.task.path
    c.task.prompt_format = "chat"                     # the Instruct checkpoints' chat template
    c.model.hf_path = ""                              # set --config.model.hf_path
    c.model.max_seq_len = 0                           # the checkpoint's context length
    # cuDNN attention (is_causal; prompt widths a multiple of 64), every block rematerialised
    c.model.overrides = {"attention_impl": "cudnn", "remat": "full"}
    c.precision.compute_dtype = "bfloat16"             # float32 master parameters (default)
    c.precision.snapshot_dtype = "compute"             # bf16 behaviour snapshots ...
    c.precision.snapshot_memory = "host"               # ... in pinned host memory
    c.learner.micro_batches = 256                      # 512 sequences as 256 x 2 rows (exact)
    c.learner.logits_chunk = 128
    c.diagnostics.cosines = False                      # 2 float32 parameter copies
    c.rl.log_ref_kl = False                            # no θ_ref held (kl_coef = 0)
    c.max_new_tokens = 512
    c.eval.num_problems = 500
    c.eval.batch_size = 250
    c.rl.steps = 500
    c.rl.prompts_per_step = 64
    c.rl.group_size = 8
    c.rl.temperature = 1.0
    c.rl.eval_every = 50
    c.rl.checkpoint_every = 50
    c.rl.loss = "grpo"
    c.rl.loss_kwargs = {"kl_coef": 0.0}
    c.rl.optimizer.lr = 1e-6                          # Adam, no weight decay, constant after warm-up
    c.rl.optimizer.warmup_steps = 10
    c.rl.optimizer.weight_decay = 0.0
    c.staleness.policy = "fixed"
    c.staleness.max_lag = 8
    c.staleness.queue_size = 2
    c.sft.steps = 200
    c.sft.batch_size = 32
    c.sft.optimizer.lr = 1e-5
    return c


# The longest prompt the memory plan assumes (tokens, after the chat template; a multiple of 64).
PLAN_PROMPT_LEN = 384


def memory_plan_flags(max_lag: int) -> list[str]:
    """`python -m bench.memory_plan` flags at this config's shapes with staleness S = max_lag
    (tests/test_hf_gsm8k.py checks that they follow get_config())."""
    c = get_config()
    rows = c.rl.prompts_per_step * c.rl.group_size
    return [
        "--preset=llama3.2-1b", f"--batch={rows}",
        f"--micro_batch={rows // c.learner.micro_batches}",
        f"--seq_len={PLAN_PROMPT_LEN + c.max_new_tokens}", f"--prompt_len={PLAN_PROMPT_LEN}",
        f"--new_tokens={c.max_new_tokens}", f"--sample_prompts={c.rl.prompts_per_step}",
        f"--num_samples={c.rl.group_size}", f"--max_lag={max_lag}",
        f"--logits_chunk={c.learner.logits_chunk}", f"--remat={c.model.overrides['remat']}",
        f"--compute_dtype={c.precision.compute_dtype}", f"--param_dtype={c.precision.param_dtype}",
        f"--snapshot_dtype={c.precision.snapshot_dtype}",
        f"--snapshot_memory={c.precision.snapshot_memory}",
        "--cosines" if c.diagnostics.cosines else "--nocosines", f"--loss={c.rl.loss}",
        f"--kl_coef={c.rl.loss_kwargs['kl_coef']}"]


if __name__ == "__main__":   # the memory-plan flags, for the shell: python -m ... S
    import sys
    print(" ".join(memory_plan_flags(int(sys.argv[1]))))
