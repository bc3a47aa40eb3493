r"""Compares every registered loss with the single-file `async_grpo/losses.py` of a git revision.

  python -m tests.compare_losses --rev=78aee9a

Loads the old module from `git show REV:async_grpo/losses.py` (it imports only chex, jax and
numpy), then for every variant it registered, with and without a KL term, eager and jitted,
checks that the loss, every metric and the gradient w.r.t. `logp` are bit-identical on a random
off-policy batch (proximal and reference log-probs included, some rows padded). The one
deliberate change is skipped and named: `total_derivative` with kl_coef > 0 now evaluates its KL
at the current policy (the old code used the behavior policy; see tests/test_losses_estimators.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import async_grpo.losses as new

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_old(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:async_grpo/losses.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "old_losses.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_losses", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batch(seed=0, b=8, t=6):
    rng = np.random.default_rng(seed)
    lp = jnp.asarray(-rng.random((b, t)) * 3, jnp.float32)
    noise = lambda s: jnp.asarray(rng.normal(size=(b, t)) * s, jnp.float32)  # noqa: E731
    mask = jnp.asarray(np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None])
    return dict(logp=lp, behavior_logp=lp + noise(0.3), proximal_logp=lp + noise(0.2),
                ref_logp=lp + noise(0.5), rewards=jnp.asarray(rng.integers(0, 2, b), jnp.float32),
                mask=mask)


def compare(old, group_size=4) -> list[str]:
    x = batch()
    diffs, checked = [], 0
    for name in old.list_losses():
        for kw in ({}, {"kl_coef": 0.1}):
            if name == "total_derivative" and kw:
                continue   # the deliberate fix (module docstring)

            def run(make, name=name, kw=kw):
                f = make(name, **kw)

                def loss(lp):
                    return f(lp, x["behavior_logp"], x["rewards"], x["mask"],
                             group_size=group_size, proximal_logp=x["proximal_logp"],
                             ref_logp=x["ref_logp"])
                (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(x["logp"])
                return value, metrics, grad

            for jit in (False, True):
                a = (jax.jit(run, static_argnums=0) if jit else run)(old.make_loss)
                b = (jax.jit(run, static_argnums=0) if jit else run)(new.make_loss)
                checked += 1
                same = (np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
                        and set(a[1]) == set(b[1])
                        and all(np.array_equal(a[1][k], b[1][k]) for k in a[1]))
                if not same:
                    diffs.append(f"{name} {kw} {'jit' if jit else 'eager'}")
    print(f"{len(old.list_losses())} variants of the old registry, {checked} (variant, KL, "
          f"jit) cases: {len(diffs)} differ")
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="git revision holding async_grpo/losses.py")
    diffs = compare(load_old(ap.parse_args().rev))
    for d in diffs:
        print("DIFFERS:", d)
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
