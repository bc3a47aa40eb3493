r"""The first GPU check: four parts, each in its own process, under one time budget.

  bash gpu/check.sh OUTDIR            # on the GPU machine (python3, the repository root)
  bash gpu/check.sh OUTDIR --tiny     # the same path on a CPU at toy shapes

(`gpu/check.sh` makes OUTDIR absolute, changes to the repository root and runs
`python3 -m bench.gpu_check OUTDIR ...`.) In this order:

1. learner: `bench/gpu_learner.py`, our learner step at the Llama-3.2-1B shape against the tied
   torch.compile peer (goal: ≥ 1.1× the peer's tokens/s);
2. decode: `bench.decode_gpu`, the sampler at the 1B shape (64 prompts × 8, P = N = 256),
   "pallas" then "auto", against the memory floor of the visible cache (goal: ≥ 50 %);
3. memory: `bench.memory_plan`, the 1B learner (B = 8, T = 1024) + the sampler + S + 1 = 9 bf16
   snapshots on the device, compiled on the GPU (goal: within one 80 GB card);
4. lm grid: `bench.lm_grid`, the 12-cell LM grid as one population program against the pipeline
   loop (4 cells measured, extrapolated; 1 with --tiny).

Before the parts, a probe process reads the JAX backend: off a GPU the check refuses (exit 3)
unless --tiny. Each part has its own time limit, cut to what is left of `--budget_s` (default
450 s: under 8 minutes with the probe and start-up). One table row is printed as each part
finishes, and `OUTDIR/check.json` is rewritten after each part (with each part's result and the
tail of its output); the parts write their own JSON into OUTDIR too (gpu_learner.json,
peer_tied/anchor_llama.json, decode.json, memory_plan.json, lm_grid.json). Exit code: 0 when
every part produced its numbers (whether or not it met its goal), 1 otherwise, 3 when refused.

Nothing here imports JAX in the driver process: the parts need the GPU's memory.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import gpu_common  # noqa: E402

PROBE = ("import json, os, platform, jax; d = jax.devices()[0]; print(json.dumps(dict(backend="
         "jax.default_backend(), device=d.device_kind, count=jax.device_count(), "
         "jax=jax.__version__, python=platform.python_version(), cpus=os.cpu_count())))")

# Part budgets in seconds (each cut to what is left of the total).
BUDGETS = {"learner": 190, "decode": 100, "memory": 75, "lm_grid": 55}
TINY_BUDGETS = {"learner": 600, "decode": 300, "memory": 300, "lm_grid": 600}


def _commands(out: str, tiny: bool, budgets: dict) -> dict:
    py = gpu_common.python()
    t = ["--tiny"] if tiny else []
    memory = (["--preset=tiny", "--batch=4", "--seq_len=64", "--prompt_len=16",
               "--sample_prompts=2", "--num_samples=2", "--new_tokens=48", "--logits_chunk=16"]
              if tiny else ["--preset=llama3.2-1b", "--batch=8", "--seq_len=1024",
                            "--prompt_len=256", "--new_tokens=768"])
    return {
        "learner": [py, os.path.join("bench", "gpu_learner.py"), f"--out_dir={out}",
                    "--chunks=0,256", "--peers=tied", f"--budget_s={budgets['learner'] - 10}",
                    *t],
        "decode": [py, "-m", "bench.decode_gpu", f"--workdir={out}", "--presets=llama3.2-1b",
                   "--decode_attention=pallas,auto", f"--budget_s={budgets['decode'] - 15}",
                   *t],
        "memory": [py, "-m", "bench.memory_plan", *memory, "--max_lag=8", "--nocosines",
                   "--budget_gb=80", f"--out={os.path.join(out, 'memory_plan.json')}"],
        "lm_grid": [py, "-m", "bench.lm_grid", f"--steps={4 if tiny else 10}",
                    "--ways=population,pipeline", f"--pipeline_cells={1 if tiny else 4}",
                    "--notensorboard",
                    f"--json_out={os.path.join(out, 'lm_grid.json')}"],
    }


def _row(name: str, r: dict) -> tuple[str, str, str]:
    """(result, goal, met?) of one part's JSON."""
    if "error" in r and name != "learner":
        return f"error: {' '.join(str(r['error']).split())[:150]}", "", "—"
    if name == "learner":
        rows = r.get("rows", {})
        ours = {n: x for n, x in rows.items() if n.startswith("ours") and "error" not in x}
        peer = r.get("peer_tied_tokens_per_s")
        if not ours:
            err = r.get("error") or next((x.get("error") for x in rows.values()), "no rows")
            return f"error: {' '.join(str(err).split())[:150]}", "≥ 1.1× peer", "—"
        best_name, best = max(ours.items(), key=lambda kv: kv[1]["tokens_per_s"])
        text = f"ours {best['tokens_per_s']:,.0f} tok/s ({best_name[6:-1]})"
        if not peer:
            why = next((x.get("error") for n, x in rows.items() if n.startswith("torch")),
                       "not run")
            return (f"{text}; no peer number ({' '.join(str(why).split())[:80]})",
                    "≥ 1.1× peer", "—")
        ratio = best["tokens_per_s"] / peer
        return (f"{text}; peer {peer:,.0f} tok/s; {ratio:.2f}×", "≥ 1.1× peer",
                "yes" if ratio >= 1.1 else "no")
    if name == "decode":
        rows = r.get("rows", [])
        if not rows:
            return f"no rows (failed: {r.get('failed')}, skipped: {r.get('skipped')})", \
                "≥ 50 % of floor", "—"
        best = max(rows, key=lambda x: x["floor_frac"])
        parts = [f"{x['decode_attention']}→{x['resolved'].split(' (')[0]} "
                 f"{100 * x['floor_frac']:.1f} % ({x['tokens_per_s']:,.0f} tok/s)" for x in rows]
        return "; ".join(parts), "≥ 50 % of floor", "yes" if best["floor_frac"] >= 0.5 else "no"
    if name == "memory":
        return (f"{r['total_gb']:.2f} GB of {r['budget_gb']:.0f} (margin {r['margin_gb']:.2f}; "
                f"XLA:{str(r['backend']).upper()})", "≤ 80 GB", "yes" if r["fits"] else "no")
    if name == "lm_grid":
        w = r["wall_s"]
        pop = next(v for k, v in w.items() if k.startswith("population"))
        pipe = next((v for k, v in w.items() if k.startswith("pipeline")), None)
        return (f"population {pop:.1f} s, pipeline {pipe:.1f} s for {r['cells']} cells "
                f"({pipe / pop:.1f}×)" if pipe else f"population {pop:.1f} s",
                "(a timing)", "—")
    raise ValueError(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", help="where check.json and the parts' JSON go")
    ap.add_argument("--tiny", action="store_true", help="toy shapes: the code path on a CPU")
    ap.add_argument("--budget_s", type=float, default=None,
                    help="total seconds for the parts (default 450; --tiny 1800)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.outdir)
    os.makedirs(out, exist_ok=True)
    budgets = TINY_BUDGETS if args.tiny else BUDGETS
    total = args.budget_s if args.budget_s is not None else (1800.0 if args.tiny else 450.0)
    try:
        deadline = gpu_common.Deadline(total)
    except ValueError as e:
        ap.error(f"--budget_s: {e}")
    path = os.path.join(out, "check.json")
    record = dict(tiny=args.tiny, budget_s=total, budgets=budgets, parts={})

    def save():
        record["wall_s"] = deadline.elapsed()
        gpu_common.write_json(path, record)

    probe, tail = gpu_common.run_part([gpu_common.python(), "-c", PROBE],
                                      deadline.timeout(120))
    record["probe"] = probe
    save()
    backend = probe.get("backend")
    gpu_common.say(f"gpu check{' --tiny' if args.tiny else ''}: jax {probe.get('jax')}, backend "
                   f"{backend}, {probe.get('count')}x {probe.get('device')}; budget {total:.0f} s;"
                   f" {out}")
    if "error" in probe:
        gpu_common.say(f"the probe failed: {probe['error']}\n{tail[-1500:]}")
        return 1
    if backend != "gpu" and not args.tiny:
        gpu_common.say(f"not on a GPU (jax backend {backend!r}): the check needs one. Run "
                       "`bash gpu/check.sh OUTDIR --tiny` for the code path on a CPU.")
        record["refused"] = f"backend {backend!r}"
        save()
        return gpu_common.NOT_ON_GPU
    cmds = _commands(out, args.tiny, budgets)
    record["commands"] = {k: " ".join(v) for k, v in cmds.items()}
    gpu_common.say("| part | result | goal | met | wall (s) |")
    gpu_common.say("|---|---|---|---|---|")
    ok = True
    for name, cmd in cmds.items():
        res, tail = gpu_common.run_part(cmd, deadline.timeout(budgets[name]))
        if name == "learner" and os.path.exists(os.path.join(out, "gpu_learner.json")):
            # The learner's own record (its rows, even when the process was cut off).
            import json  # pylint: disable=import-outside-toplevel
            with open(os.path.join(out, "gpu_learner.json"), encoding="utf-8") as f:
                res = {**json.load(f), "part_wall_s": res["part_wall_s"],
                       **({"error": res["error"]} if "error" in res else {})}
        try:
            result, goal, met = _row(name, res)
        except (KeyError, TypeError, ValueError, StopIteration) as e:
            result, goal, met = f"unreadable result ({type(e).__name__}: {e})", "", "—"
        if args.tiny:
            met = "— (tiny)"   # toy shapes on a CPU: no goal applies
        failed = result.startswith(("error", "no rows", "unreadable"))
        ok &= not failed
        record["parts"][name] = dict(result=res, row=[result, goal, met], tail=tail[-3000:],
                                     ok=not failed)
        save()
        gpu_common.say(f"| {name} | {result} | {goal} | {met} | {res['part_wall_s']:.0f} |")
    record["ok"] = ok
    save()
    gpu_common.say(f"gpu check: {'every part produced its numbers' if ok else 'FAILED parts'} in "
                   f"{deadline.elapsed():.0f} s of {total:.0f}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
