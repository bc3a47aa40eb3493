r"""Our learner step against the torch.compile peer at the Llama-3.2-1B shape, on one GPU.

One command; each row has its own time limit and all rows share `--budget_s` (default 420 s):

  python3 bench/gpu_learner.py --out_dir=DIR           # GPU: the 1B shape
  python3 bench/gpu_learner.py --out_dir=DIR --tiny    # toy shapes on a CPU: checks the code path

Needs jax, flax, optax, numpy and absl-py (this package's GPU path imports neither ml_collections
nor tensorboardX), and torch for the peer rows (a peer row without torch says so). Off a GPU it
refuses the 1B shape (exit 3) unless --tiny.

Every measurement runs in its own process (a JAX process keeps its memory pool), in this order:

1. `peak`: the card's measured bf16 matmul throughput (`jax.jit(a @ b)`, 8192³ on random
   normal data, 20 back-to-back calls timed together, best of 3 such loops);
2. `ours`: `async_grpo.rl.learner.update` (the project's one optimizer update: GRPO objective with
   the DAPO loss, teacher-forced log-probs by `sampling.score_responses`, AdamW with clipping,
   parameters and optimizer state donated; the step returns every metric `Learner.step` logs and
   the timing waits on all of them) on a random rollout batch of B = 8 rows of T = 1024 tokens
   (1-token prompts + 1023 response tokens), Llama-3.2-1B preset (tied embeddings), bf16
   compute, float32 parameters, cuDNN attention on a GPU (the xla attention is retried when
   cuDNN fails). With the full logits (`--chunks` 0) and with `logits_chunk=256`;
3. the peer `third_party/llama_anchor/llama_anchor.py torch --tied` (same tied shape) and
   `... torch` (untied, the shape of the H200 figure 59.9k tokens/s in
   /work/shared/research/gpu-anchors.md), `--peers`.

Rows run in the order peak, ours (first chunk), tied peer, the other ours rows, untied peer, so a
short budget still gets the comparison. It prints the table header at once and each row as it
finishes, and rewrites `<out_dir>/gpu_learner.json` after each row: tokens/s, TFLOP/s by the
peer's own FLOP formula (6·N·tokens + 6·L·T·d per token, N = matmul parameters incl. the output
head), the fraction of the measured peak, and the ratio to the tied peer (the goal is ≥ 1.1×).
Exit code 0 when every ours row has a number (through the xla fallback too), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import gpu_common  # noqa: E402

ANCHOR = os.path.join(ROOT, "third_party", "llama_anchor", "llama_anchor.py")
TINY_SHAPE = dict(V=512, d=64, L=2, H=4, KV=2, F=128, T=64, B=2)     # = the anchor's --tiny
FULL_SHAPE = dict(V=128256, d=2048, L=16, H=32, KV=8, F=8192, T=1024, B=8)
ROW_TIMEOUT_S = 240      # one row at most (compile included); all rows share --budget_s


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
    """bf16 matmul TFLOP/s on random normal data (constant inputs run faster: 894 against 788
    TFLOP/s on an H200), 20 calls back to back per timing, best of 3 timings."""
    import jax
    import jax.numpy as jnp
    n = 512 if tiny else 8192
    calls = 3 if tiny else 20
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        outs = [f(a, b) for _ in range(calls)]
        jax.block_until_ready(outs)
        best = min(best, (time.perf_counter() - t0) / calls)
    return dict(peak_tflops=2 * n**3 / best / 1e12, matmul=f"bf16 {n}^3 random, {calls} calls",
                device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                jax=jax.__version__)


def part_ours(tiny: bool, logits_chunk: int, remat: str, steps: int, attention: str) -> dict:
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
        # Every metric out, as `Learner.step` returns them: XLA may drop nothing it computes.
        params, opt_state, _, m = update(params, opt_state, {}, batch, None, i, objective=obj,
                                         optimizer=opt, track_cosines=False, collapse=None)
        return params, opt_state, m

    step = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    params, opt_state, m = step(params, opt_state, batch, jnp.int32(0))
    jax.block_until_ready((params, m))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, m = step(params, opt_state, batch, jnp.int32(i + 1))
    jax.block_until_ready((params, opt_state, m))
    dt = (time.perf_counter() - t0) / steps
    tokens = b * t
    loss = float(m["loss"])
    return dict(tokens_per_s=tokens / dt, tflops=anchor_flops(c, tokens) / dt / 1e12,
                compile_s=compile_s, loss=loss, finite=bool(np.isfinite(loss)),
                metrics=len(m), attention_impl=attn, logits_chunk=logits_chunk, remat=remat,
                params_M=models.param_count(params) / 1e6, backend=jax.default_backend())


# ------------------------------------------------------------------------------------------------
# The driver.
# ------------------------------------------------------------------------------------------------


def _peer_row(res: dict, c: dict) -> dict:
    if "torch_tokens_per_s" not in res:
        return {"error": res.get("torch_error") or res.get("error") or "no result"}
    tok = res["torch_tokens_per_s"]
    return dict(tokens_per_s=tok, tflops=anchor_flops(c, tok) / 1e12,
                compile_s=res.get("torch_compile_s"), torch=res.get("torch"))


HEADER = ("| run | tokens/s | TFLOP/s | of measured peak | vs torch.compile (tied) | compile (s) |"
          "\n|---|---|---|---|---|---|")


def format_row(name: str, r: dict, pk: float | None, peer: float | None) -> str:
    if "error" in r:
        err = " ".join(str(r["error"]).split())[:160]
        return f"| {name} | error: {err} | | | | |"
    frac = f"{100 * r['tflops'] / pk:.1f}%" if pk else "—"
    ratio = f"{r['tokens_per_s'] / peer:.2f}×" if peer else "—"
    comp = r.get("compile_s")
    return (f"| {name} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {frac} | {ratio} | "
            f"{'—' if comp is None else f'{comp:.0f}'} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out_dir", default="", help="write gpu_learner.json (after every row) and "
                    "the peers' JSON here")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (a CPU check of the path)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    ap.add_argument("--remat", default="none", help="LlamaConfig.remat of our learner")
    ap.add_argument("--chunks", default="0,256", help="logits_chunk of the ours rows, in order")
    ap.add_argument("--peers", default="tied,untied", help="peer rows: tied, untied ('' none)")
    ap.add_argument("--budget_s", type=float, default=420.0, help="total time for all rows")
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
    try:
        chunks = [int(x) for x in args.chunks.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--chunks={args.chunks!r}: must be comma-separated integers >= 0, e.g. 0,256")
    if not chunks or min(chunks) < 0:
        ap.error(f"--chunks={args.chunks!r}: must be comma-separated integers >= 0, e.g. 0,256")
    peers = [x for x in args.peers.split(",") if x.strip()]
    bad = sorted(set(peers) - {"tied", "untied"})
    if bad:
        ap.error(f"--peers={args.peers!r}: {bad} unknown; allowed: tied, untied (or empty)")

    deadline = gpu_common.Deadline(args.budget_s)
    c = TINY_SHAPE if args.tiny else FULL_SHAPE
    out = args.out_dir
    json_path = os.path.join(out, "gpu_learner.json") if out else ""
    py = gpu_common.python()
    me = [py, os.path.abspath(__file__)] + (["--tiny"] if args.tiny else [])
    me += ["--steps", str(steps), "--remat", args.remat]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    rows, logs = {}, {}
    record = dict(tiny=args.tiny, shape=c, budget_s=args.budget_s, rows=rows, logs=logs)

    def save():
        record["wall_s"] = deadline.elapsed()
        if json_path:
            gpu_common.write_json(json_path, record)

    peak, logs["peak"] = gpu_common.run_part(me + ["--part", "peak"],
                                             deadline.timeout(ROW_TIMEOUT_S), env)
    record["peak"] = peak
    save()
    backend = peak.get("backend")
    if backend != "gpu" and not args.tiny:
        gpu_common.say(f"not on a GPU (jax backend {backend!r}, device {peak.get('device')!r}; "
                       f"{peak.get('error', '')}): the 1B learner needs one. Use --tiny for the "
                       "code path on a CPU.")
        record["refused"] = f"backend {backend!r}"
        save()
        return gpu_common.NOT_ON_GPU
    pk = peak.get("peak_tflops")
    gpu_common.say(f"device: {peak.get('device', '?')} ({backend}); jax {peak.get('jax')}; "
                   f"measured peak {pk and f'{pk:.3g}'} TFLOP/s "
                   f"({peak.get('matmul', peak.get('error'))}); shape {c}; "
                   f"{'TINY (code-path check, not a benchmark)' if args.tiny else 'Llama-3.2-1B'}")
    gpu_common.say(HEADER)
    peer_tps = None

    def emit(name, r):
        rows[name] = r
        gpu_common.say(format_row(name, r, pk, peer_tps))
        save()

    attention = args.attention

    def ours(chunk):
        nonlocal attention
        name = f"ours (update, logits_chunk={chunk})"
        cmd = me + ["--part", "ours", "--logits_chunk", str(chunk)]
        r, logs[name] = gpu_common.run_part(cmd + ["--attention", attention],
                                            deadline.timeout(ROW_TIMEOUT_S), env)
        if "error" in r and not attention and backend == "gpu" and \
                not str(r["error"]).startswith(("timed out", "skipped")):
            emit(name + ", cudnn attention", r)
            attention = "xla"   # cuDNN attention failed on this card/version: fall back
            name += ", xla attention"
            r, logs[name] = gpu_common.run_part(cmd + ["--attention", attention],
                                                deadline.timeout(ROW_TIMEOUT_S), env)
        emit(name, r)

    def peer(kind):
        nonlocal peer_tps
        label = f"torch.compile peer, {kind}"
        penv = dict(env)
        if out:
            penv["OUT"] = os.path.join(out, f"peer_{kind}")
            os.makedirs(penv["OUT"], exist_ok=True)
        res, logs[label] = gpu_common.run_part(
            [py, ANCHOR, "torch"] + (["--tied"] if kind == "tied" else []) +
            (["--tiny"] if args.tiny else []), deadline.timeout(ROW_TIMEOUT_S), penv)
        r = _peer_row(res, c)   # the anchor counts the V×d head once, tied or not
        if kind == "tied" and "tokens_per_s" in r:
            peer_tps = r["tokens_per_s"]
        emit(label, r)

    ours(chunks[0])
    if "tied" in peers:
        peer("tied")
        if peer_tps:   # the first ours row again, now with its ratio to the peer
            first = next(n for n in rows if n.startswith("ours"))
            gpu_common.say(format_row(first, rows[first], pk, peer_tps))
    for chunk in chunks[1:]:
        ours(chunk)
    if "untied" in peers:
        peer("untied")
    record["peer_tied_tokens_per_s"] = peer_tps
    ours_rows = [r for n, r in rows.items() if n.startswith("ours")]
    # Per chunk setting: a number from cuDNN or from the xla fallback.
    ok = all(any("error" not in r for n, r in rows.items()
                 if n.startswith(f"ours (update, logits_chunk={ch})")) for ch in chunks)
    record["ok"] = ok and bool(ours_rows)
    save()
    gpu_common.say(f"gpu_learner: {'ok' if record['ok'] else 'FAILED'} in "
                   f"{deadline.elapsed():.0f} s" + (f"; wrote {json_path}" if json_path else ""))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
