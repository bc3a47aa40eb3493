r"""GRPO on GSM8K from a Hugging Face Qwen2.5 checkpoint on your own GPU (the paper's setting).

Nothing is downloaded: point the config at local files (the checkpoint directory holds
config.json, *.safetensors and tokenizer.json; GSM8K as {"question", "answer"} JSONL):

  python -m experiments.train --config=experiments/configs/gsm8k_qwen.py \
      --workdir=runs/gsm8k_qwen/S8_lr1e-6 \
      --config.model.hf_path=/path/to/Qwen2.5-1.5B-Instruct \
      --config.task.path=/path/to/gsm8k/train.jsonl \
      --config.staleness.max_lag=8 --config.rl.optimizer.lr=1e-6

GRPO starts from the checkpoint's weights (no init_from). To warm-start a base model with SFT on
the reference answers first: `python -m experiments.sft` with the same flags and
--workdir=runs/gsm8k_qwen/sft, then add --config.init_from=runs/gsm8k_qwen/sft to the train
command. The paper's grid (fixed staleness S in {8, 16, 32} x Adam learning rate in
[1e-7, 1e-6]) is `SWEEP` below, one run per cell:

  for S in 8 16 32; do for lr in 1e-7 3e-7 1e-6; do
    python -m experiments.train --config=experiments/configs/gsm8k_qwen.py \
        --workdir=runs/gsm8k_qwen/S${S}_lr${lr} --config.model.hf_path=$MODEL \
        --config.task.path=$GSM8K --config.staleness.max_lag=$S --config.rl.optimizer.lr=$lr
  done; done

Hardware and memory (an estimate from the shapes, not a measurement: no run of this config on a
GPU has been made yet). Qwen2.5-1.5B has 1.54e9 parameters (tied embeddings, q/k/v biases). The
learner holds float32 params, gradients and two Adam moments (16 B/param = 25 GB), the frozen
reference policy (4 B/param = 6 GB), the cosine diagnostics' two copies (8 B/param = 12 GB; off
with --config.diagnostics.cosines=false) and queue_size + 1 behaviour snapshots (4 B/param each);
the bfloat16 KV cache (28 layers x 2 KV heads x 128 dims: 28 KB/token) for 64 x 8 x 768 tokens
is 11 GB. Expect about 70 GB: one 80 GB A100/H100 or an H200. Qwen2.5-0.5B (4.9e8 params) fits
a 40 GB GPU. Qwen2.5's vocabulary (151,936 ids) makes the logits of a 512-sequence learner batch
large: lower rl.prompts_per_step if the learner runs out of memory.
"""

# The same run and grid as gsm8k_llama.py; only the checkpoint (--config.model.hf_path) differs.
from experiments.configs.gsm8k_llama import SWEEP, get_config  # noqa: F401  pylint: disable=unused-import
