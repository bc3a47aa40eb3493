r"""η_max(S) of delayed gradient descent on a quadratic, measured with `async_grpo.simulate`.

  python -m experiments.delayed_quadratic --workdir=runs/delayed_quadratic

(The config defaults to experiments/configs/delayed_quadratic.py, whose docstring states the
problem and the exact stability bound.) Writes <workdir>/results.json (the grid, every cell's
collapse step, η_max per seed and the exact bound) and prints the table that docs/simulator.md
shows.
"""

from __future__ import annotations

import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_flags

from async_grpo import collapse, files, simulate
from async_grpo import scaling as xa

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "delayed_quadratic.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


# --- the model problem (shown in docs/simulator.md) ---------------------------------------------
def make_problem(curvatures, noise):
    lam = jnp.asarray(curvatures)

    def update(theta, phi, key, ctx):
        """h(θ, φ) = ∇f(φ): the gradient at the stale iterate (plus optional noise)."""
        h = lam * phi + noise * jax.random.normal(key, phi.shape)
        return h, {"theta_norm": jnp.linalg.norm(theta)}

    def init(key, cell):
        return jax.random.normal(key, lam.shape)

    def objective(theta, ctx):
        """J(θ) = −f(θ) = −½ Σ λ_i θ_i²."""
        return -0.5 * jnp.sum(lam * theta ** 2)

    def optimizer(cell):
        return optax.inject_hyperparams(optax.sgd)(learning_rate=cell["lr"])

    return update, init, objective, optimizer
# -------------------------------------------------------------------------------------------------


def exact_eta_max(s: int, lam_max: float) -> float:
    """The exact bound: θ_{t+1} = θ_t − a θ_{t−S} is stable iff 0 < a < 2 cos(Sπ/(2S+1))."""
    return 2.0 * np.cos(s * np.pi / (2 * s + 1)) / lam_max


def run(c) -> dict:
    curv = [float(x) for x in str(c.curvatures).split(",") if x.strip()]
    lags = [int(x) for x in str(c.lags).split(",") if x.strip()]
    if not curv or min(curv) <= 0:
        raise ValueError(f"--config.curvatures={c.curvatures!r}: must be positive numbers.")
    if not (0 < c.lr_min < c.lr_max) or c.num_lrs < 2:
        raise ValueError(f"need 0 < lr_min < lr_max and num_lrs >= 2, got {c.lr_min}, "
                         f"{c.lr_max}, {c.num_lrs}.")
    lrs = np.geomspace(c.lr_min, c.lr_max, int(c.num_lrs))
    update, init, objective, optimizer = make_problem(curv, float(c.noise))
    train = simulate.make_train(
        update, init, optimizer, num_steps=int(c.num_steps), staleness="fixed",
        max_lag_cap=max(lags), objective=objective,
        collapse=collapse.CollapseRules.from_dict(dict(c.collapse)))
    cells = simulate.make_cells(max_lag=lags, lr=lrs, seed=range(int(c.num_seeds)))
    _, summary = simulate.run_cells(train, cells, keep_metrics=())
    collapsed = summary["collapsed"].reshape(len(lags), len(lrs), int(c.num_seeds))
    eta, censor = xa.eta_max_per_seed(lrs, collapsed)
    rows = []
    for i, s in enumerate(lags):
        exact = exact_eta_max(s, max(curv))
        rows.append({"S": s, "eta_max_per_seed": eta[i].tolist(), "censor": censor[i].tolist(),
                     "exact": exact, "ratio_min": float(eta[i].min() / exact),
                     "ratio_max": float(eta[i].max() / exact)})
    fit = xa.fit_power_law([r["S"] for r in rows if r["S"] >= 1],
                           [np.exp(np.log(r["eta_max_per_seed"]).mean()) for r in rows
                            if r["S"] >= 1])
    fit_exact = xa.fit_power_law([r["S"] for r in rows if r["S"] >= 1],
                                 [r["exact"] for r in rows if r["S"] >= 1])
    return {"config": c.to_dict(), "lrs": lrs.tolist(), "grid_step": float(lrs[1] / lrs[0]),
            "collapse_rules": train.collapse.describe(), "rows": rows, "fit_S_ge_1": fit,
            "fit_exact_S_ge_1": fit_exact,
            "collapse_step": summary["collapse_step"].tolist()}


def table(res: dict) -> str:
    lines = ["| S | η_max measured (min–max over seeds) | exact 2cos(Sπ/(2S+1))/λ_max | measured / exact |",
             "|---|---|---|---|"]
    for r in res["rows"]:
        lo, hi = min(r["eta_max_per_seed"]), max(r["eta_max_per_seed"])
        lines.append(f"| {r['S']} | {lo:.4f}–{hi:.4f} | {r['exact']:.4f} | "
                     f"{r['ratio_min']:.3f}–{r['ratio_max']:.3f} |")
    f = res["fit_S_ge_1"]
    lines.append("")
    fe = res["fit_exact_S_ge_1"]
    lines.append(f"Fit η_max ∝ S^−α over S ≥ 1: measured α = {f['alpha']:.3f} (R² {f['r2']:.4f}), "
                 f"exact curve α = {fe['alpha']:.3f} (R² {fe['r2']:.4f}); η grid step "
                 f"×{res['grid_step']:.4f}.")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    try:
        res = run(_CONFIG.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    files.write_json_atomic(os.path.join(_WORKDIR.value, "results.json"), res)
    print(table(res))


if __name__ == "__main__":
    app.run(main)
