r"""Our learner step against the torch.compile peer at the Llama-3.2-1B shape, on one GPU.

One command, about 5–8 minutes on one GPU, nothing to install beyond jax/flax/optax/torch:

  python bench/gpu_learner.py                 # writes $OUT/gpu_learner.json when OUT is set
  python bench/gpu_learner.py --tiny          # toy shapes on a CPU: checks the code path

Every measurement runs in its own process (a JAX process keeps its memory pool):

1. `peak`: the card's measured bf16 matmul throughput (`jax.jit(a @ b)`, 8192³, best of 10);
2. `ours`: `async_grpo.rl.learner.update` (the project's one optimizer update: GRPO objective with
   the DAPO loss, teacher-forced log-probs by `sampling.score_responses`, AdamW with clipping,
   parameters and optimizer state donated) on a random rollout batch of B = 8 rows of
   T = 1024 tokens (1-token prompts + 1023 response tokens), Llama-3.2-1B preset (tied
   embeddings), bf16 compute, float32 parameters, cuDNN attention on a GPU. Once with the full
   logits and once with `logits_chunk=256` (the memory-saving setting);
3. the peer `third_party/llama_anchor/llama_anchor.py torch --tied` (same tied shape) and
   `... torch` (untied, the shape of the H200 figure 59.9k tokens/s in
   /work/shared/research/gpu-anchors.md).

It prints ONE table: tokens/s, TFLOP/s by the peer's own FLOP formula (6·N·tokens + 6·L·T·d
per token, N = matmul parameters incl. the output head), the fraction of the measured peak, and
the ratio to the tied peer (the goal is ≥ 1.1×).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = os.path.join(ROOT, "third_party", "llama_anchor", "llama_anchor.py")
TINY_SHAPE = dict(V=512, d=64, L=2, H=4, KV=2, F=128, T=64, B=2)     # = the anchor's --tiny
FULL_SHAPE = dict(V=128256, d=2048, L=16, H=32, KV=8, F=8192, T=1024, B=8)


def anchor_flops(c: dict, tokens: int) -> float:
    """The peer's FLOP count (llama_anchor.flops), so every row uses one formula."""
    hd = c["d"] // c["H"]
    per_layer = c["d"] * c["d"] * 2 + 2 * c["d"] * c["KV"] * hd + 3 * c["d"] * c["F"]
    n = c["L"] * per_layer + c["V"] * c["d"]
    return tokens * (6 * n + c["L"] * 6 * c["T"] * c["d"])


# ------------------------------------------------------------------------------------------------
# Parts (each runs in its own process and prints one JSON line last).
# ------------------------------------------------------------------------------------------------


def part_peak(tiny: bool) -> dict:
    import jax
    import jax.numpy as jnp
    n = 512 if tiny else 8192
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(3 if tiny else 10):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return dict(peak_tflops=2 * n**3 / best / 1e12, matmul=f"bf16 {n}^3",
                device=jax.devices()[0].device_kind, backend=jax.default_backend())


def part_ours(tiny: bool, logits_chunk: int, remat: str, steps: int, attention: str) -> dict:
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from async_grpo import losses, models
    from async_grpo.config import OptimizerConfig
    from async_grpo.rl.components import make_optimizer
    from async_grpo.rl.learner import update
    from async_grpo.rl.objectives import GRPOObjective

    gpu = jax.default_backend() == "gpu"
    c = TINY_SHAPE if tiny else FULL_SHAPE
    attn = attention or ("cudnn" if gpu else "xla")
    if tiny:
        cfg = models.LlamaConfig(vocab_size=c["V"], d_model=c["d"], n_layers=c["L"],
                                 n_heads=c["H"], n_kv_heads=c["KV"], head_dim=c["d"] // c["H"],
                                 mlp_dim=c["F"], max_seq_len=c["T"], rope_theta=500_000.0,
                                 dtype="bfloat16", attention_impl=attn, remat=remat)
    else:
        cfg = models.get_config("llama3.2-1b", dtype="bfloat16", param_dtype="float32",
                                attention_impl=attn, remat=remat)
    graphdef, params = models.init_model(cfg, 0)
    b, t = c["B"], c["T"]
    p, n = 1, t - 1
    obj = GRPOObjective(graphdef, losses.make_loss("dapo"), losses.make_loss("total_derivative"),
                        0.0, group_size=b, temperature=1.0, logits_chunk=logits_chunk)
    opt = make_optimizer(OptimizerConfig(lr=1e-5, warmup_steps=0), 1000)
    opt_state = opt.init(params)
    rng = np.random.default_rng(0)
    batch = dict(prompt_tokens=jnp.asarray(rng.integers(0, c["V"], (b, p)), jnp.int32),
                 prompt_lengths=jnp.full((b,), p, jnp.int32),
                 response_tokens=jnp.asarray(rng.integers(0, c["V"], (b, n)), jnp.int32),
                 response_mask=jnp.ones((b, n), jnp.float32),
                 behavior_logp=jnp.full((b, n), -np.log(c["V"]), jnp.float32),
                 rewards=jnp.asarray(rng.integers(0, 2, b), jnp.float32))

    def step(params, opt_state, batch, i):
        params, opt_state, _, m = update(params, opt_state, {}, batch, None, i, objective=obj,
                                         optimizer=opt, track_cosines=False, collapse=None)
        return params, opt_state, m["loss"]

    step = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batch, jnp.int32(0))
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batch, jnp.int32(i + 1))
    loss.block_until_ready()
    dt = (time.perf_counter() - t0) / steps
    tokens = b * t
    return dict(tokens_per_s=tokens / dt, tflops=anchor_flops(c, tokens) / dt / 1e12,
                compile_s=compile_s, loss=float(loss), finite=bool(np.isfinite(float(loss))),
                attention_impl=attn, logits_chunk=logits_chunk, remat=remat,
                params_M=models.param_count(params) / 1e6)


# ------------------------------------------------------------------------------------------------
# The driver.
# ------------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float, out_dir: str = "") -> tuple[dict, str]:
    """Runs one part (with OUT=out_dir, or without OUT); -> (its last JSON line, or
    {"error": ...}; the output tail)."""
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        env["OUT"] = out_dir
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=env)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        return {"error": f"timed out after {timeout:.0f} s"}, str(e.stdout or "")[-2000:]
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
                res["wall_s"] = time.perf_counter() - t0
                return res, out[-2000:]
            except json.JSONDecodeError:
                break
    return {"error": f"exit {proc.returncode}: {out.strip()[-300:]}"}, out[-2000:]


def _peer_row(res: dict, c: dict) -> dict:
    if "torch_tokens_per_s" not in res:
        return {"error": res.get("torch_error") or res.get("error") or "no result"}
    tok = res["torch_tokens_per_s"]
    return dict(tokens_per_s=tok, tflops=anchor_flops(c, tok) / 1e12,
                compile_s=res.get("torch_compile_s"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy shapes (a CPU check of the path)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    ap.add_argument("--remat", default="none", help="LlamaConfig.remat of our learner")
    ap.add_argument("--chunk", type=int, default=256, help="logits_chunk of the second ours row")
    ap.add_argument("--skip_peer", action="store_true", help="only our learner")
    ap.add_argument("--part", default="", help=argparse.SUPPRESS)
    ap.add_argument("--logits_chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--attention", default="", help="attention_impl of our learner (default: "
                    "cudnn on a GPU, xla elsewhere; xla is retried if cudnn fails)")
    args = ap.parse_args(argv)
    steps = args.steps or (2 if args.tiny else 10)
    if args.part == "peak":
        print(json.dumps(part_peak(args.tiny)))
        return 0
    if args.part == "ours":
        print(json.dumps(part_ours(args.tiny, args.logits_chunk, args.remat, steps,
                                   args.attention)))
        return 0

    c = TINY_SHAPE if args.tiny else FULL_SHAPE
    out = os.environ.get("OUT", "")
    timeout = 300 if args.tiny else 240
    me = [sys.executable, os.path.abspath(__file__)] + (["--tiny"] if args.tiny else [])
    me += ["--steps", str(steps), "--remat", args.remat]
    rows, logs = {}, {}
    peak, logs["peak"] = _run(me + ["--part", "peak"], timeout)
    attention = args.attention
    for chunk in (0, args.chunk):
        name = f"ours (update, logits_chunk={chunk})"
        cmd = me + ["--part", "ours", "--logits_chunk", str(chunk)]
        rows[name], logs[name] = _run(cmd + ["--attention", attention], timeout)
        if "error" in rows[name] and not attention and peak.get("backend") == "gpu":
            attention = "xla"   # cuDNN attention failed on this card/version: fall back
            name += ", xla attention"
            rows[name], logs[name] = _run(cmd + ["--attention", attention], timeout)
    if not args.skip_peer:
        for label, extra in (("torch.compile peer, tied", ["--tied"]),
                             ("torch.compile peer, untied", [])):
            sub = os.path.join(out, "peer_" + ("tied" if extra else "untied")) if out else ""
            res, logs[label] = _run([sys.executable, ANCHOR, "torch"] + extra +
                                    (["--tiny"] if args.tiny else []), timeout, sub)
            rows[label] = _peer_row(res, c)   # the anchor counts the V×d head once, tied or not

    peer = rows.get("torch.compile peer, tied", {}).get("tokens_per_s")
    pk = peak.get("peak_tflops")
    print(f"device: {peak.get('device', '?')} ({peak.get('backend', '?')}); measured peak "
          f"{pk and round(pk, 1)} TFLOP/s ({peak.get('matmul', peak.get('error'))}); shape "
          f"{c}; {'TINY (code-path check, not a benchmark)' if args.tiny else 'Llama-3.2-1B'}")
    print("| run | tokens/s | TFLOP/s | of measured peak | vs torch.compile (tied) | compile (s) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            err = " ".join(r["error"].split())[:120]
            print(f"| {name} | error: {err} | | | | |")
            continue
        frac = f"{100 * r['tflops'] / pk:.1f}%" if pk else "—"
        ratio = f"{r['tokens_per_s'] / peer:.2f}×" if peer else "—"
        comp = r.get("compile_s")
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {frac} | {ratio} | "
              f"{'—' if comp is None else f'{comp:.0f}'} |")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_learner.json"), "w", encoding="utf-8") as f:
            json.dump(dict(tiny=args.tiny, shape=c, peak=peak, rows=rows, logs=logs), f, indent=1)
    ours_ok = all("error" not in r for n, r in rows.items() if n.startswith("ours"))
    return 0 if ours_ok else 1


if __name__ == "__main__":
    sys.exit(main())
