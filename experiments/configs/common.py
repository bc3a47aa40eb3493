"""Defaults shared by the per-task configs (`get_base_config`); each task file overrides them."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.log_every = 1
    c.keep_checkpoints = 3
    # The SFT workdir (or its checkpoints/ directory) that experiments/train.py starts from.
    c.init_from = ""

    c.task = ml_collections.ConfigDict({"name": "addition", "kwargs": {"num_digits": 3}})
    # Response budget in tokens; 0 = the task's longest reference answer + 2 (eos and one spare).
    c.max_new_tokens = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "small"
    c.model.max_seq_len = 32
    c.model.overrides = ml_collections.ConfigDict()  # any LlamaConfig field, e.g. n_layers=2

    c.eval = ml_collections.ConfigDict()
    c.eval.num_problems = 500        # fixed held-out set (seed below), disjoint from train by hash
    c.eval.seed = 1234
    c.eval.batch_size = 500
    c.eval.greedy = True             # "heldout/accuracy": greedy decoding
    c.eval.sampled = True            # also "heldout_sampled/accuracy": 1 sample at rl.temperature

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 300
    c.sft.batch_size = 64
    c.sft.num_examples = 0           # size of the fixed SFT set; 0 = fresh problems every step
    c.sft.data_seed = 7
    c.sft.eval_every = 100
    c.sft.optimizer = ml_collections.ConfigDict({
        "lr": 1e-3, "warmup_steps": 50, "schedule": "cosine", "end_lr_frac": 0.1,
        "b1": 0.9, "b2": 0.99, "weight_decay": 0.01, "grad_clip": 1.0})

    c.rl = ml_collections.ConfigDict()
    c.rl.steps = 200
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.temperature = 1.0
    c.rl.top_k = 0                   # 0 = off
    c.rl.top_p = 0.0                 # 0 = off
    c.rl.loss = "grpo"               # any name of async_grpo.losses.make_loss
    # Overrides of the loss variant's settings (async_grpo.losses.loss_config). kl_coef is the
    # weight of the KL penalty to the SFT policy (the paper default of "grpo" is 0.04, k3 in the
    # loss); add other keys in a config file (a locked config rejects new keys on the command line).
    c.rl.loss_kwargs = ml_collections.ConfigDict({"kl_coef": 0.04})
    c.rl.log_ref_kl = True           # log KL(current || SFT) every step (one extra forward pass)
    c.rl.eval_every = 25
    c.rl.checkpoint_every = 50
    c.rl.optimizer = ml_collections.ConfigDict({
        "lr": 1e-4, "warmup_steps": 10, "schedule": "constant",
        "b1": 0.9, "b2": 0.99, "weight_decay": 0.0, "grad_clip": 1.0})

    # Which parameter version generates each batch (async_grpo.staleness). This trainer is
    # synchronous: only policy="sync" with max_lag=0 is implemented.
    c.staleness = ml_collections.ConfigDict({"policy": "sync", "max_lag": 0})
    return c
