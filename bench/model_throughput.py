r"""Learner and sampler throughput of the policy model.

Learner: one jitted step of forward + backward + AdamW update on random tokens, parameters and
optimizer state donated. Sampler: `async_grpo.sampling.sample` (prefill + KV-cache decode loop)
with EOS disabled so every row decodes `new_tokens` tokens.

FLOPs are the usual estimates: learner `6·N + 12·L·T·H·Dh` per token (N = parameters in matmuls,
the second term is attention, non-causal convention), sampler `2·N + 4·L·S·H·Dh` per token (S =
cache slots attended, P + new_tokens). MFU is achieved FLOP/s over `--peak_tflops`; on a CPU the
default "peak" is a measured large float32 matmul on this machine (so it reads as "fraction of
matmul throughput"), on known accelerators the datasheet dense peak of the compute dtype.

Default run (the "small" preset on a CPU, ~1-2 minutes):

  .venv/bin/python bench/model_throughput.py [--tune_malloc]

The Llama-3.2-1B shape in bf16 on one GPU (the H200 anchor used seq 1024, batch 8):

  python bench/model_throughput.py --preset=llama3.2-1b --dtype=bfloat16 --batch=8 \
      --seq_len=1024 --sample_prompts=32 --num_samples=8 --prompt_len=256 --new_tokens=256
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from async_grpo import models  # noqa: E402
from async_grpo import sampling  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "small", "Model preset (see async_grpo.models.PRESETS).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Override the preset's vocabulary size.")
_ATTN = flags.DEFINE_enum("attention_impl", "einsum", ["einsum", "xla", "cudnn"],
                          "Attention implementation.")
_BATCH = flags.DEFINE_integer("batch", 8, "Learner batch (sequences).")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Learner sequence length.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed learner steps (after one compile/warm-up step).")
_PROMPTS = flags.DEFINE_integer("sample_prompts", 64, "Prompts per sampler call.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Samples per prompt (prefill shared).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt width P (true lengths P/2..P).")
_NEW = flags.DEFINE_list("new_tokens", ["16", "96"], "Decode lengths to time.")
_SAMPLE_REPEATS = flags.DEFINE_integer("sample_repeats", 2, "Timed sampler calls per setting.")
_TUNE_MALLOC = flags.DEFINE_bool(
    "tune_malloc", False,
    "Raise glibc's mmap/trim thresholds (mallopt) before running. On CPU the XLA runtime mallocs "
    "and frees buffers of the KV-cache size every decode step; above glibc's 32 MiB dynamic mmap "
    "threshold each one is a fresh mmap with page faults (high sys time).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s for MFU (default: see docstring).")
_SKIP_LEARNER = flags.DEFINE_bool("skip_learner", False, "Only time the sampler.")
_SKIP_SAMPLER = flags.DEFINE_bool("skip_sampler", False, "Only time the learner.")

# Dense datasheet peaks (TFLOP/s) by device kind substring: (bf16, float32).
_DATASHEET = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
              "TPU v4": (275.0, 275.0 / 2), "TPU v5 lite": (197.0, 197.0 / 2),
              "TPU v5": (459.0, 459.0 / 2), "TPU v6": (918.0, 918.0 / 2)}


def tune_glibc_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 2 << 30) -> bool:
    """Keeps large freed blocks in glibc's heap instead of returning them to the OS (Linux only).

    Same effect as launching with MALLOC_MMAP_THRESHOLD_=... MALLOC_TRIM_THRESHOLD_=...
    """
    import ctypes  # pylint: disable=g-import-not-at-top
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        libc.mallopt(m_trim_threshold, trim_threshold))


def _machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        model = platform.processor() or "cpu"
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
            model = next((l.split(":", 1)[1].strip() for l in out.splitlines()
                          if l.startswith("Model name")), model)
        except OSError:
            pass
        return f"CPU {model}, {os.cpu_count()} cores"
    return f"{jax.device_count()}x {dev.device_kind}"


def _measured_matmul_tflops(n: int = 2048, reps: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _peak(dtype: str) -> tuple[float, str]:
    if _PEAK.value:
        return _PEAK.value, "--peak_tflops"
    dev = jax.devices()[0]
    for kind, (bf16, f32) in _DATASHEET.items():
        if kind in dev.device_kind:
            return (bf16 if dtype == "bfloat16" else f32), f"datasheet {kind} {dtype}"
    if dev.platform == "cpu":
        return _measured_matmul_tflops(), "measured f32 2048^3 matmul"
    return float("nan"), "unknown"


def _attn_flops(cfg, length: int) -> int:
    return cfg.n_layers * length * cfg.n_heads * cfg.head_dim


def bench_learner(cfg, graphdef, params, peak):
    b, t = _BATCH.value, _SEQ.value
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)

    def loss_fn(p, tokens):
        logits = models.forward(graphdef, p, tokens[:, :-1])
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)
        return -jnp.mean(logp)

    def step(p, o, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    tokens = jax.random.randint(jax.random.key(1), (b, t + 1), 0, cfg.vocab_size, jnp.int32)
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, tokens)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        params, opt_state, loss = step(params, opt_state, tokens)
    loss.block_until_ready()
    dt = (time.perf_counter() - t0) / _STEPS.value
    tok_s = b * t / dt
    flops_tok = 6 * cfg.matmul_params() + 12 * _attn_flops(cfg, t)
    tflops = tok_s * flops_tok / 1e12
    return dict(what=f"learner step B={b} T={t}", time=f"{dt * 1e3:.0f} ms",
                tok_s=tok_s, tflops=tflops, mfu=tflops / peak, compile=compile_s)


def bench_sampler(cfg, graphdef, params, peak, new_tokens):
    rng = np.random.default_rng(0)
    n_p, p = _PROMPTS.value, _PROMPT_LEN.value
    lengths = rng.integers(max(1, p // 2), p + 1, n_p).astype(np.int32)
    prompts = rng.integers(0, cfg.vocab_size, (n_p, p)).astype(np.int32)
    kw = dict(max_new_tokens=new_tokens, eos_id=None, pad_id=0, temperature=1.0,
              num_samples=_NUM_SAMPLES.value)
    t0 = time.perf_counter()
    jax.block_until_ready(
        sampling.sample(graphdef, params, prompts, lengths, jax.random.key(0), **kw))
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(_SAMPLE_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(
            sampling.sample(graphdef, params, prompts, lengths, jax.random.key(r + 1), **kw))
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    rows = n_p * _NUM_SAMPLES.value
    tok_s = rows * new_tokens / dt
    # Decode FLOPs only (the shared prefill adds 2·N·n_p·P, small here): forward matmuls plus
    # attention over all P + new_tokens cache slots.
    flops_tok = 2 * cfg.matmul_params() + 4 * _attn_flops(cfg, p + new_tokens)
    tflops = tok_s * flops_tok / 1e12
    return dict(what=f"sampler {n_p}x{_NUM_SAMPLES.value} rows, P={p}, {new_tokens} new",
                time=f"{dt * 1e3:.0f} ms", tok_s=tok_s, tflops=tflops, mfu=tflops / peak,
                compile=compile_s)


def main(argv):
    del argv
    if _TUNE_MALLOC.value:
        print(f"glibc mallopt tuning applied: {tune_glibc_malloc()}")
    overrides = dict(dtype=_DTYPE.value, attention_impl=_ATTN.value)
    if _VOCAB.value:
        overrides["vocab_size"] = _VOCAB.value
    cfg = models.get_config(_PRESET.value, **overrides)
    graphdef, params = models.init_model(cfg, 0)
    peak, peak_src = _peak(cfg.dtype)
    print(f"machine: {_machine()}; jax {jax.__version__}; backend {jax.default_backend()}")
    print(f"model: {_PRESET.value} ({models.param_count(params) / 1e6:.2f}M params, "
          f"{cfg.matmul_params() / 1e6:.2f}M in matmuls), compute {cfg.dtype}, params "
          f"{cfg.param_dtype}, attention {cfg.attention_impl}")
    print(f"peak for MFU: {peak:.3f} TFLOP/s ({peak_src})")
    rows = []
    if not _SKIP_LEARNER.value:
        rows.append(bench_learner(cfg, graphdef, params, peak))
        graphdef, params = models.init_model(cfg, 0)  # the learner donated its parameters
    if not _SKIP_SAMPLER.value:
        for n in _NEW.value:
            rows.append(bench_sampler(cfg, graphdef, params, peak, int(n)))
    print()
    print("| what | time / call | tokens/s | TFLOP/s | MFU | compile (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['time']} | {r['tok_s']:,.0f} | {r['tflops']:.4f} | "
              f"{100 * r['mfu']:.1f}% | {r['compile']:.1f} |")


if __name__ == "__main__":
    app.run(main)
