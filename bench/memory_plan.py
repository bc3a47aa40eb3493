r"""Memory plan of the learner step and the sampler, compiled from abstract shapes (nothing
allocated), with a per-device budget.

Lowers and compiles `async_grpo.rl.learner.update` (the project's one optimizer update, exactly as
`Learner` jits it: parameters, optimizer state and aux donated) and the sampler
(`sampling._sample_jit`) on `jax.ShapeDtypeStruct` inputs (`models.abstract_model`,
`jax.eval_shape` of the optimizer init), prints XLA's compiled memory analysis of each
(arguments, outputs, aliased, temporaries) and a budget table that adds what the pipeline holds
at once on one device::

    total = learner step peak  (θ, Adam state, aux, reference θ_ref, batch, outputs not aliased,
                                temporaries: activations, gradients, logits chunks)
          + held snapshots     ((max_lag + 1) versions φ, in the snapshot dtype)
          + sampler peak       (temporaries incl. the KV cache; its parameters are a snapshot)

The learner and the sampler run concurrently in the asynchronous pipeline, so their peaks add.
The analysis is the compiling backend's: on a CPU it is XLA:CPU's (fusion and buffer assignment
differ from XLA:GPU, cuDNN attention is not used), which the table header says.

  python -m bench.memory_plan --preset=llama3.2-1b --batch=8 --seq_len=1024 [--micro_batch=4] \
      [--max_lag=8] [--out=runs/memory_plan/llama3.2-1b.json]

(`--out` writes the numbers as JSON for `python -m experiments.report`, KIND memory_plan.)
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from async_grpo import collapse as collapse_lib  # noqa: E402
from async_grpo import config as config_lib  # noqa: E402
from async_grpo import losses, models, sampling  # noqa: E402
from async_grpo.rl import learner as learner_lib  # noqa: E402
from async_grpo.rl.components import make_optimizer  # noqa: E402
from async_grpo.rl.objectives import GRPOObjective  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "llama3.2-1b", "Model preset.")
_BATCH = flags.DEFINE_integer("batch", 8, "Learner batch (sequences).")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "Learner sequence length (prompt + response).")
_PROMPT = flags.DEFINE_integer("prompt_len", 256, "Prompt width P (learner and sampler).")
_MICRO = flags.DEFINE_integer("micro_batch", 0, "Rows per micro-batch (0: the whole batch).")
_LAG = flags.DEFINE_integer("max_lag", 8, "S: the pipeline holds up to S + 1 snapshots.")
_CHUNK = flags.DEFINE_integer("logits_chunk", 128, "learner.logits_chunk (0: full logits).")
_REMAT = flags.DEFINE_enum("remat", "full", ["none", "full", "dots", "dots_no_batch"],
                           "LlamaConfig.remat of the learner's blocks.")
_ATTN = flags.DEFINE_enum("attention_impl", "auto", ["auto", "einsum", "xla", "cudnn"],
                          "LlamaConfig.attention_impl of the learner (auto: cudnn on a GPU, "
                          "einsum elsewhere; cuDNN lowers only on a GPU).")
_COMPUTE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["float32", "bfloat16"], "")
_PARAM = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "")
_MU = flags.DEFINE_enum("opt_state_dtype", "", ["", "float32", "bfloat16"], "'' = param dtype")
_SNAP = flags.DEFINE_enum("snapshot_dtype", "compute", ["param", "compute"], "")
_SNAP_MEM = flags.DEFINE_enum("snapshot_memory", "device", ["device", "host"],
                              "precision.snapshot_memory: host = held in pinned host memory "
                              "(listed, not counted against the device budget).")
_LOSS = flags.DEFINE_string("loss", "grpo", "Loss variant; with a KL term the reference θ_ref "
                                            "is held (rl.loss_kwargs default kl_coef=0.04).")
_KL = flags.DEFINE_float("kl_coef", 0.04, "kl_coef override of the loss.")
_COSINES = flags.DEFINE_bool("cosines", True, "diagnostics.cosines: 2 extra parameter copies.")
_PROMPTS = flags.DEFINE_integer("sample_prompts", 32, "Sampler prompts per call.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Samples per prompt.")
_NEW = flags.DEFINE_integer("new_tokens", 768, "Sampler response budget N.")
_SKIP_SAMPLER = flags.DEFINE_bool("skip_sampler", False, "Only the learner.")
_BUDGET = flags.DEFINE_float("budget_gb", 80.0, "Device memory to fit in (GB = 1e9 bytes).")
_OUT = flags.DEFINE_string("out", "", "Write the numbers as JSON here.")

GB = 1e9


def _bytes(tree) -> int:
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _analysis(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "alias", "temp", "generated_code")}
    # Peak of one call: live arguments + outputs that do not reuse a donated argument + scratch.
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _abstract(x, dtype=None):
    return jax.ShapeDtypeStruct(x.shape, dtype or x.dtype)


def learner_plan(cfg, rc) -> dict:
    graphdef, params = models.abstract_model(cfg)
    b, t, p = _BATCH.value, _SEQ.value, _PROMPT.value
    n = t - p
    micro = _MICRO.value or b
    if b % micro:
        raise app.UsageError(f"--micro_batch={micro} must divide --batch={b}")
    loss_fn = losses.make_loss(_LOSS.value, kl_coef=_KL.value)
    objective = GRPOObjective(graphdef, loss_fn, losses.make_loss("total_derivative"), 0.0,
                              group_size=rc.group_size if b % rc.group_size == 0 else b,
                              temperature=1.0, logits_chunk=_CHUNK.value)
    opt = make_optimizer(rc.optimizer, rc.steps, mu_dtype=_MU.value)
    opt_state = jax.eval_shape(opt.init, params)
    aux = {}
    if _COSINES.value:
        aux = dict(prev_grad=params, prev_update=params)
    aux["collapse"] = jax.eval_shape(collapse_lib.init_state)
    ref = params if objective.needs_ref else None
    i32, f32 = jnp.int32, jnp.float32
    batch = dict(prompt_tokens=jax.ShapeDtypeStruct((b, p), i32),
                 prompt_lengths=jax.ShapeDtypeStruct((b,), i32),
                 response_tokens=jax.ShapeDtypeStruct((b, n), i32),
                 response_mask=jax.ShapeDtypeStruct((b, n), f32),
                 behavior_logp=jax.ShapeDtypeStruct((b, n), f32),
                 rewards=jax.ShapeDtypeStruct((b,), f32))
    fn = functools.partial(learner_lib.update, objective=objective, optimizer=opt,
                           track_cosines=_COSINES.value, collapse=_collapse_rules(),
                           micro_batches=b // micro)
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=(0, 1, 2)).lower(
        params, opt_state, aux, batch, ref, jax.ShapeDtypeStruct((), i32))
    compiled = lowered.compile()
    out = _analysis(compiled)
    out.update(compile_s=time.perf_counter() - t0, params=_bytes(params),
               opt_state=_bytes(opt_state), aux=_bytes(aux), ref=_bytes(ref) if ref else 0,
               batch=_bytes(batch), micro_batches=b // micro, loss=_LOSS.value,
               needs_ref=objective.needs_ref, full_logits=b * n * cfg.vocab_size * 4)
    return out


def _collapse_rules():
    return config_lib.RunConfig().collapse


def sampler_plan(cfg) -> dict:
    snap_dtype = cfg.compute_dtype if _SNAP.value == "compute" else cfg.params_dtype
    graphdef, params = models.abstract_model(cfg)
    params = jax.tree.map(lambda x: _abstract(x, snap_dtype), params)
    n_p, p, n = _PROMPTS.value, _PROMPT.value, _NEW.value
    i32 = jnp.int32
    t0 = time.perf_counter()
    lowered = sampling._sample_jit.lower(  # pylint: disable=protected-access
        graphdef, params, jax.ShapeDtypeStruct((n_p, p), i32), jax.ShapeDtypeStruct((n_p,), i32),
        jax.eval_shape(lambda: jax.random.key(0)), jax.ShapeDtypeStruct((), i32),
        max_new_tokens=n, eos_id=None, pad_id=0, temperature=jnp.float32(1.0), greedy=False,
        top_k=None, top_p=None, num_samples=_NUM_SAMPLES.value, return_logits=False)
    compiled = lowered.compile()
    out = _analysis(compiled)
    rows = n_p * _NUM_SAMPLES.value
    out.update(compile_s=time.perf_counter() - t0, rows=rows, slots=p + n,
               kv_cache=rows * (p + n) * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim *
               cfg.compute_dtype.itemsize)
    return out


def budget(cfg, learner: dict, sampler: dict | None) -> tuple[list, dict]:
    snap_dtype = cfg.compute_dtype if _SNAP.value == "compute" else cfg.params_dtype
    one_snap = cfg.num_params() * jnp.dtype(snap_dtype).itemsize
    held = _LAG.value + 1
    rows = [
        ("θ (params, " + cfg.param_dtype + ")", learner["params"]),
        ("Adam state (μ " + (_MU.value or cfg.param_dtype) + ", ν " + cfg.param_dtype + ")",
         learner["opt_state"]),
        ("aux (previous grad and update for cosines; collapse state)", learner["aux"]),
        ("θ_ref (KL reference)" if learner["needs_ref"] else "θ_ref (not needed)",
         learner["ref"]),
        ("rollout batch", learner["batch"]),
        ("learner temporaries (activations, grads, logits chunks; compiled)", learner["temp"]),
        ("learner outputs not aliased to donated inputs (compiled)",
         learner["output"] - learner["alias"]),
    ]
    snap_name = f"held snapshots: {held} × {one_snap / GB:.2f} GB ({jnp.dtype(snap_dtype).name})"
    if _SNAP_MEM.value == "host":   # one at a time is moved to the device to sample
        rows.append((snap_name + " in host memory; 1 on the device while sampling", one_snap))
    else:
        rows.append((snap_name, held * one_snap))
    if sampler:
        rows.append((f"sampler temporaries (incl. KV cache {sampler['kv_cache'] / GB:.2f} GB; "
                     "compiled)", sampler["temp"] + sampler["output"]))
    total = sum(v for _, v in rows)
    return rows, dict(total=total, budget=_BUDGET.value * GB, margin=_BUDGET.value * GB - total)


def _fmt(v):
    return f"{v / GB:.2f}"


def main(argv):
    del argv
    attn = _ATTN.value
    if attn == "auto":
        attn = "cudnn" if jax.default_backend() == "gpu" else "einsum"
    cfg = models.get_config(_PRESET.value, dtype=_COMPUTE.value, param_dtype=_PARAM.value,
                            remat=_REMAT.value, attention_impl=attn)
    rc = config_lib.RLConfig()
    backend = jax.default_backend()
    dev = jax.devices()[0].device_kind
    print(f"backend {backend} ({dev}); jax {jax.__version__}; {platform.node()}")
    print(f"model {_PRESET.value}: {cfg.num_params() / 1e9:.3f}B params, compute {cfg.dtype}, "
          f"params {cfg.param_dtype}, remat {cfg.remat}, logits_chunk {_CHUNK.value}, attention "
          f"{cfg.attention_impl}")
    learner = learner_plan(cfg, rc)
    print(f"learner compiled in {learner['compile_s']:.0f} s")
    sampler = None
    if not _SKIP_SAMPLER.value:
        sampler = sampler_plan(cfg)
        print(f"sampler compiled in {sampler['compile_s']:.0f} s")
    rows, tot = budget(cfg, learner, sampler)
    print()
    print(f"Compiled memory analysis ({'XLA:' + backend.upper()}; GB = 1e9 bytes)")
    print("| program | arguments | outputs | aliased | temporaries | peak |")
    print("|---|---|---|---|---|---|")
    for name, a in (("learner step", learner), ("sampler", sampler)):
        if a:
            print(f"| {name} | {_fmt(a['argument'])} | {_fmt(a['output'])} | {_fmt(a['alias'])} "
                  f"| {_fmt(a['temp'])} | {_fmt(a['peak'])} |")
    print()
    print(f"Per-device budget (compiled parts from XLA:{backend.upper()}'s analysis)")
    print("| held at once | GB |")
    print("|---|---|")
    for name, v in rows:
        print(f"| {name} | {_fmt(v)} |")
    print(f"| **total** | **{_fmt(tot['total'])}** |")
    print(f"| budget / margin | {_fmt(tot['budget'])} / {_fmt(tot['margin'])} |")
    print(f"(full float32 logits [B, N, V] would be {_fmt(learner['full_logits'])} GB, plus their "
          "gradient)")
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        record = dict(
            backend=backend, device_kind=dev, jax=jax.__version__, preset=_PRESET.value,
            num_params=cfg.num_params(),
            settings=dict(batch=_BATCH.value, seq_len=_SEQ.value, prompt_len=_PROMPT.value,
                          micro_batch=_MICRO.value or _BATCH.value, max_lag=_LAG.value,
                          logits_chunk=_CHUNK.value, remat=cfg.remat, compute_dtype=cfg.dtype,
                          attention_impl=cfg.attention_impl,
                          param_dtype=cfg.param_dtype, opt_state_dtype=_MU.value or cfg.param_dtype,
                          snapshot_dtype=_SNAP.value, snapshot_memory=_SNAP_MEM.value,
                          loss=_LOSS.value, kl_coef=_KL.value,
                          cosines=_COSINES.value, sample_prompts=_PROMPTS.value,
                          num_samples=_NUM_SAMPLES.value, new_tokens=_NEW.value),
            learner=learner, sampler=sampler, budget_rows=[[n, v] for n, v in rows], **tot)
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {_OUT.value}")
    # Last line: a JSON summary (bench/gpu_check.py reads it).
    print(json.dumps(dict(backend=backend, device_kind=dev, preset=_PRESET.value,
                          max_lag=_LAG.value, total_gb=tot["total"] / GB,
                          budget_gb=_BUDGET.value, margin_gb=tot["margin"] / GB,
                          fits=tot["margin"] >= 0)))


if __name__ == "__main__":
    app.run(main)
