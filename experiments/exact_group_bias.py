r"""The finite-group bias of sampled mode on the exact testbed, by exact enumeration.

  python -m experiments.exact_group_bias --workdir=runs/exact_group_bias [--group_sizes=2,3,4,6,8]

For three advantage estimators (GRPO: group mean and std; Dr. GRPO: group mean, no std; RLOO:
leave-one-out, no std) and each group size G, the relative gap ‖E[H_G] − H_pop‖ / ‖H_pop‖
between the expected sampled mapping (`exact.expected_sampled_H`: every ordered group of G
responses per prompt enumerated with its probability) and the population mapping. Testbed: 2
prompts, V = 2, L = 2, an mlp policy, θ inside the clip band of φ (a 0.02 perturbation), float64.
Writes <workdir>/results.json; the table in docs/exact_testbed.md is rendered from it.
"""

from __future__ import annotations

import os

from absl import app, flags
import jax
import jax.flatten_util
import numpy as np

from async_grpo import files
from async_grpo import workdir as workdir_lib
from async_grpo.testbeds import exact as ex

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_GROUPS = flags.DEFINE_list("group_sizes", ["2", "3", "4", "6", "8"], "Group sizes G.")

ESTIMATORS = {
    "group mean + std (GRPO, std ddof=1)": dict(),
    "group mean, no std (Dr. GRPO)": dict(std_normalize=False),
    "leave-one-out, no std (RLOO)": dict(std_normalize=False, leave_one_out=True),
}


def measure(group_sizes) -> dict:
    jax.config.update("jax_enable_x64", True)
    out = {}
    for name, kw in ESTIMATORS.items():
        tb = ex.make_testbed(ex.TestbedConfig(num_prompts=2, vocab_size=2, seq_len=2,
                                              policy="mlp", hidden_dim=4, init_scale=1.0,
                                              reward="partial", loss_kwargs=kw))
        phi = ex.init_params(tb, jax.random.PRNGKey(3))
        flat, unravel = jax.flatten_util.ravel_pytree(phi)
        noise = jax.random.normal(jax.random.PRNGKey(4), flat.shape, flat.dtype)
        theta = unravel(flat + 0.02 * noise)
        h_pop = jax.flatten_util.ravel_pytree(ex.population_H(tb, theta, phi))[0]
        fn = jax.jit(ex.expected_sampled_H, static_argnums=(0, 3))
        gaps = {}
        for g in group_sizes:
            e_h = jax.flatten_util.ravel_pytree(fn(tb, theta, phi, g))[0]
            gaps[str(g)] = float(np.linalg.norm(e_h - h_pop) / np.linalg.norm(h_pop))
        out[name] = gaps
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    groups = [int(g) for g in _GROUPS.value]
    if not groups or min(groups) < 2:
        raise app.UsageError(f"--group_sizes={_GROUPS.value}: integers >= 2.")
    gaps = measure(groups)
    files.write_json_atomic(os.path.join(_WORKDIR.value, "results.json"), {
        "group_sizes": groups, "relative_gap": gaps, "machine": workdir_lib.machine()})
    for name, g in gaps.items():
        print(name, " ".join(f"G={k}: {v:.3g}" for k, v in g.items()))


if __name__ == "__main__":
    app.run(main)
