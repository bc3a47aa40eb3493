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

Hardware and memory (an estimate from the shapes, not a measurement: no run of this config on a
GPU has been made yet). Llama-3.2-1B has 1.24e9 parameters. The learner holds float32 params,
gradients and two Adam moments (16 B/param = 20 GB), the frozen reference policy for the KL
(4 B/param = 5 GB), the cosine diagnostics' two parameter copies (8 B/param = 10 GB; switch off
with --config.diagnostics.cosines=false) and queue_size + 1 behaviour snapshots (4 B/param each);
the sampler's bfloat16 KV cache for 64 prompts x 8 samples x 768 tokens is 32 KB/token = 13 GB.
Expect about 60 GB: one 80 GB A100/H100, or an H200. Llama-3.2-3B (3.2e9 params, 112 KB/token of
KV cache) needs about 2.6x as much: an H200 with cosines off, or a mesh over several GPUs
(--config.mesh.axes=data=1,fsdp=-1,tensor=1).
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
    c.model.overrides = {"attention_impl": "xla"}
    c.precision.compute_dtype = "bfloat16"             # float32 master parameters (default)
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
