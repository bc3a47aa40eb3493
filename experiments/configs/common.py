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

    # The asynchronous engine (async_grpo.rl.engine; docs/async_engine.md).
    c.rl.grad_mode = "surrogate"     # surrogate | total_derivative | corrected
    c.rl.td_coef = 1.0               # corrected: grad of (1 - c) L_sur + c L_td
    c.rl.td_loss_kwargs = ml_collections.ConfigDict()  # total-derivative loss settings

    # Which parameter version generates each batch (async_grpo.staleness): "sync" (max_lag 0),
    # "fixed" (batch t from exactly theta_(t-S)), "sync_interval" (refresh every S steps) or
    # "bounded_async" (newest version, lag <= S). publish_every: the learner publishes theta every
    # k updates (fixed needs 1; sync_interval k | S; bounded_async k <= S + 1). queue_size:
    # finished batches that may wait for the learner.
    c.staleness = ml_collections.ConfigDict({"policy": "sync", "max_lag": 0, "publish_every": 1,
                                             "queue_size": 1})

    # Learner mesh (params/opt state sharded by logical axes, batch on data x fsdp); num_devices:
    # use the first n devices (0 = all); generator_devices: the last m of them form a separate
    # generator mesh (0 = shared).
    c.mesh = ml_collections.ConfigDict({"axes": "data=-1,fsdp=1,tensor=1", "num_devices": 0,
                                        "generator_devices": 0})

    # Per-step diagnostics: gradient/update cosines, exact drift from the held snapshot, and every
    # bias_every steps (0 = off) a fresh on-policy batch to measure the staleness bias.
    c.diagnostics = ml_collections.ConfigDict({"cosines": True, "exact_drift": True,
                                               "bias_every": 0})

    # Collapse detector (async_grpo.diagnostics.CollapseConfig; each criterion off at 0).
    c.collapse = ml_collections.ConfigDict({
        "warmup_steps": 10, "reward_frac": 0.0, "reward_ema": 0.9, "kl_max": 0.0,
        "kl_key": "loss/kl_behavior_k3", "entropy_min": 0.0, "stop": True})
    return c
