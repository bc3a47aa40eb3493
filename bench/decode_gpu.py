r"""Sampler decode speed against the memory floor, on one accelerator (one command, < 8 minutes).

For each model (default: the Llama-3.2-1B shape, then `small`) and each decode attention
implementation (`LlamaConfig.decode_attention`) it times `async_grpo.sampling.sample` with EOS off
(every row decodes every token) at `--new_tokens` N and at 1 new token; the difference is N − 1
decode steps, so the prefill drops out:

    step time        t_step  = (T(N) − T(1)) / (N − 1)
    decode tokens/s          = rows / t_step                       (rows = prompts × G)
    bytes per step   bytes   = weights + the KV cache a step must read
                     weights = Σ parameters × itemsize(compute dtype)   (the sampler casts once)
                     cache   = 2 (k, v) · L · rows · K · (P + N/2) · Dh · itemsize
                               (decode step t sees only its P + t filled slots; over the timed
                               steps t = 1 … N − 1 that is P + N/2 on average. The same floor
                               for every implementation: "xla" and "reduce" read all P + N
                               slots, masked, so they cannot reach it; "pallas" reads only the
                               visible ones)
    achieved bandwidth       = bytes / t_step
    memory floor     t_floor = bytes / B_meas
    fraction of the floor    = t_floor / t_step   (= achieved / measured bandwidth; goal ≥ 50 %)

B_meas is measured in the same process: a jitted elementwise negation of a `--copy_gib` GiB
array (2 GiB, far above any cache), which reads and writes every byte once,
B_meas = 2 · size / time (best of 5).

  python3 -m bench.decode_gpu --workdir=DIR          # GPU: 1B (bf16, 64 prompts × 8, P = N = 256)
  python3 -m bench.decode_gpu --workdir=DIR --tiny   # CPU: the same code path on a tiny shape

It prints each row as it finishes, rewrites `<workdir>/decode.json` after each, and ends with
the table. `--budget_s` is checked before every timed call (not only between settings), so one
slow setting cannot run far past it. Off a GPU it refuses the full shapes (exit 3) unless
--tiny: a CPU decode at the 1B shape would take hours. On a CPU the numbers are only a check of
the code path (decode_attention "pallas" then runs in Pallas interpret mode).
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from async_grpo import files, models, sampling
from async_grpo.models import llama
from async_grpo.workdir import machine

NOT_ON_GPU = 3   # = bench.gpu_common.NOT_ON_GPU


class OverBudget(Exception):
    """The time budget ran out before a timed call."""

def _define_flags():
    """Flags exist only when this module is the binary, so tests can import its functions
    beside other binaries (absl refuses a flag defined twice)."""
    global _TINY, _PRESETS, _DTYPE, _IMPLS, _PROMPTS, _G, _P, _N, _REPEATS, _COPY_GIB
    global _BUDGET, _WORKDIR
    _TINY = flags.DEFINE_bool("tiny", False, "Tiny shapes (tiny preset, 4 prompts × 2, P = 16, "
                              "N = 48, a 16 MiB copy): checks the code path on a CPU.")
    _PRESETS = flags.DEFINE_list("presets", ["llama3.2-1b", "small"], "Model presets.")
    _DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
    _IMPLS = flags.DEFINE_list("decode_attention", ["auto", "reduce", "pallas"],
                               "LlamaConfig.decode_attention values to time ('auto' on a GPU in bf16 "
                               "is 'xla').")
    _PROMPTS = flags.DEFINE_integer("prompts", 64, "Prompts per call.")
    _G = flags.DEFINE_integer("num_samples", 8, "Samples per prompt (G; the prefill is shared).")
    _P = flags.DEFINE_integer("prompt_len", 256, "Prompt width P (all prompts full length).")
    _N = flags.DEFINE_integer("new_tokens", 256, "Decode steps N.")
    _REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per setting (median).")
    _COPY_GIB = flags.DEFINE_float("copy_gib", 2.0, "Size of the bandwidth-probe array (GiB).")
    _BUDGET = flags.DEFINE_float("budget_s", 360.0, "Total time (s): no timed call starts past "
                                  "it; the settings left are listed as skipped.")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/decode_gpu", "Where decode.json goes.")


def measure_bandwidth(gib: float, reps: int = 5) -> float:
    """Bytes/s of a jitted elementwise negation of a `gib` GiB bf16 array (reads + writes)."""
    n = int(gib * 2**30) // 2 // 4096 * 4096
    x = jnp.ones((n // 4096, 4096), jnp.bfloat16)   # 2-D: no 2^31-element flat index
    f = jax.jit(jnp.negative)
    f(x).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * 2 * n / best


def visible_slots(prompt_len: int, new_tokens: int) -> float:
    """Mean cache slots a timed decode step sees: P + t at step t = 1 … N − 1, i.e. P + N/2."""
    return prompt_len + new_tokens / 2


def bytes_per_step(cfg, params, rows: int, slots: float) -> dict:
    item = jnp.dtype(cfg.compute_dtype).itemsize
    weights = models.param_count(params) * item
    cache = 2 * cfg.n_layers * rows * cfg.n_kv_heads * slots * cfg.head_dim * item
    return {"weights": weights, "cache": cache, "total": weights + cache}


def _check(deadline):
    if deadline is not None and time.time() > deadline:
        raise OverBudget()


def _time_sample(graphdef, params, prompts, lengths, n, num_samples, repeats, deadline=None):
    kw = dict(max_new_tokens=n, eos_id=None, pad_id=0, temperature=1.0, num_samples=num_samples)
    _check(deadline)
    t0 = time.perf_counter()
    jax.block_until_ready(sampling.sample(graphdef, params, prompts, lengths, jax.random.key(0),
                                          **kw))
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        _check(deadline)
        t0 = time.perf_counter()
        jax.block_until_ready(sampling.sample(graphdef, params, prompts, lengths,
                                              jax.random.key(r + 1), **kw))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), first


def bench_model(preset: str, impl: str, shape: dict, bandwidth: float,
                deadline: float | None = None) -> dict:
    p, n = shape["prompt_len"], shape["new_tokens"]
    cfg = models.get_config(preset, dtype=_DTYPE.value, decode_attention=impl,
                            max_seq_len=max(p + n, 32))
    graphdef, params = models.init_model(cfg, 0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (shape["prompts"], p)).astype(np.int32)
    lengths = np.full((shape["prompts"],), p, np.int32)
    t_n, c_n = _time_sample(graphdef, params, prompts, lengths, n, shape["num_samples"],
                            shape["repeats"], deadline)
    t_1, c_1 = _time_sample(graphdef, params, prompts, lengths, 1, shape["num_samples"],
                            shape["repeats"], deadline)
    rows = shape["prompts"] * shape["num_samples"]
    step = (t_n - t_1) / (n - 1)
    b = bytes_per_step(cfg, params, rows, visible_slots(p, n))
    resolved = llama.decode_attention_impl(impl, cfg.compute_dtype)
    cache_slots = llama.decode_cache_slots(cfg, p + n)
    if resolved == "pallas":
        splits = llama._pallas_k_splits(  # pylint: disable=protected-access
            cache_slots, rows * cfg.n_kv_heads)
        resolved = (f"pallas ({cache_slots} slots, {splits} splits)" if splits else
                    f"xla (pallas does not fit {cache_slots} slots)")
    return {"preset": preset, "decode_attention": impl, "resolved": resolved,
            "params": models.param_count(params), "rows": rows, "prompt_len": p,
            "new_tokens": n, "cache_slots": cache_slots, "visible_slots": visible_slots(p, n),
            "dtype": cfg.dtype, "call_s": t_n, "prefill_call_s": t_1,
            "compile_s": c_n + c_1 - t_n - t_1, "step_s": step,
            "tokens_per_s": rows / step if step > 0 else float("nan"),
            "bytes_per_step": b, "achieved_bytes_per_s": b["total"] / step if step > 0 else
            float("nan"), "floor_s": b["total"] / bandwidth,
            "floor_frac": b["total"] / bandwidth / step if step > 0 else float("nan")}


def table(r: dict) -> str:
    lines = [f"device: {r['device']}; measured bandwidth {r['bandwidth'] / 1e9:,.1f} GB/s "
             f"({r['copy_gib']:g} GiB negation, read + write)", "",
             "| model | decode attention | rows | P + N | step | decode tokens/s | MB / step "
             "(weights + visible cache, P + N/2 slots) | achieved GB/s | memory floor / step | "
             "fraction of floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        b = x["bytes_per_step"]
        lines.append(
            f"| {x['preset']} ({x['params'] / 1e6:,.2f}M, {x['dtype']}) | "
            f"{x['decode_attention']} → {x['resolved']} | {x['rows']} | {x['prompt_len']} + "
            f"{x['new_tokens']} | {1e3 * x['step_s']:.3f} ms | {x['tokens_per_s']:,.0f} | "
            f"{b['total'] / 1e6:,.2f} ({b['weights'] / 1e6:,.2f} + {b['cache'] / 1e6:,.2f}) | "
            f"{x['achieved_bytes_per_s'] / 1e9:,.1f} | {1e3 * x['floor_s']:.3f} ms | "
            f"{100 * x['floor_frac']:.1f} % |")
    return "\n".join(lines)


def main(argv):
    del argv
    t_start = time.time()
    deadline = t_start + _BUDGET.value
    if _TINY.value:
        presets = ["tiny"]
        shape = dict(prompts=4, num_samples=2, prompt_len=16, new_tokens=48, repeats=3)
        gib = 1 / 64
    else:
        presets = _PRESETS.value
        shape = dict(prompts=_PROMPTS.value, num_samples=_G.value, prompt_len=_P.value,
                     new_tokens=_N.value, repeats=_REPEATS.value)
        gib = _COPY_GIB.value
    if shape["new_tokens"] < 2:
        raise app.UsageError(f"--new_tokens={shape['new_tokens']} must be >= 2")
    dev = jax.devices()[0]
    if dev.platform != "gpu" and not _TINY.value:
        print(f"not on a GPU (jax backend {jax.default_backend()!r}, device {dev.device_kind!r}):"
              " the 1B decode would take hours here. Use --tiny for the code path on a CPU.",
              flush=True)
        return NOT_ON_GPU
    bandwidth = measure_bandwidth(gib)
    print(f"device {dev.device_kind} ({dev.platform}); bandwidth {bandwidth / 1e9:,.1f} GB/s",
          flush=True)
    rows, skipped, failed = [], [], []
    result = {"device": f"{jax.device_count()}x {dev.device_kind}", "platform": dev.platform,
              "jax": jax.__version__, "bandwidth": bandwidth, "copy_gib": gib, "tiny": _TINY.value,
              "budget_s": _BUDGET.value, "rows": rows, "skipped": skipped, "failed": failed,
              "machine": machine()}
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, "decode.json")

    def save():
        result["wall_s"] = time.time() - t_start
        files.write_json_atomic(path, result)

    save()
    for preset in presets:
        for impl in _IMPLS.value:
            try:
                row = bench_model(preset, impl, shape, bandwidth, deadline)
            except OverBudget:
                skipped.append(f"{preset}/{impl}")
                print(f"{preset} {impl}: skipped (past --budget_s={_BUDGET.value:g})", flush=True)
                save()
                continue
            except Exception as e:  # pylint: disable=broad-except
                # One implementation failing (e.g. a kernel that does not lower on this card)
                # must not cost the others' numbers.
                print(f"{preset} {impl}: FAILED: {type(e).__name__}: {e}"[:2000], flush=True)
                failed.append(f"{preset}/{impl}: {type(e).__name__}: {str(e)[:500]}")
                save()
                continue
            rows.append(row)
            save()
            print(f"{preset} {impl} → {row['resolved']}: {1e3 * row['step_s']:.2f} ms/step, "
                  f"{row['tokens_per_s']:,.0f} tokens/s, {100 * row['floor_frac']:.1f} % of the "
                  f"floor ({time.time() - t_start:.0f} s)", flush=True)
    save()
    print()
    print(table(result))
    for line in failed:
        print(f"failed: {line}")
    if skipped:
        print(f"\nskipped (past --budget_s={_BUDGET.value:g}): {', '.join(skipped)}")
    print(f"wrote {path}")
    summary = {"rows": [{k: x[k] for k in ("preset", "decode_attention", "resolved", "step_s",
                                            "tokens_per_s", "floor_frac")} for x in rows],
               "skipped": skipped, "failed": failed, "platform": dev.platform,
               "device": dev.device_kind, "wall_s": time.time() - t_start}
    print(json.dumps(summary))
    return 0 if rows and not failed else 1


if __name__ == "__main__":
    _define_flags()
    app.run(main)
