r"""Makes a warm-start checkpoint to ship in the repository: SFT, then keep step k's parameters.

  python -m experiments.warm_start --config=experiments/configs/sweep_lm.py:learn \
      --workdir=runs/warm_start/add2_tiny --out=experiments/data/warm_start_add2_tiny

The config is an LM sweep config (experiments/configs/sweep_lm.py): its `run.sft` is the SFT
recipe, `warm_start_step` the step whose parameters are kept (`run.init_from` is ignored here; it
is where the sweep will read the result). SFT runs in full into --workdir (resumable), with a
checkpoint every `warm_start_step` steps; step k's parameters are then written alone (no optimizer
state) as an orbax checkpoint under <out>/checkpoints/<k>/, which `run.init_from=<out>` loads, and
<out>/MANIFEST.json records the sha256 of every file, a digest of the parameters
(`checkpoint.params_digest`), their held-out accuracy, this command and the machine.

Why ship it: a start inside SFT's phase transition depends on the CPU's float rounding
(docs/reproducibility.md); the shipped file gives every machine the same weights
(docs/learning_regime.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from async_grpo import checkpoint as ckpt_lib
from async_grpo import config as config_lib
from async_grpo import files, models
from async_grpo import workdir as workdir_lib
from async_grpo.rl import components
from async_grpo.sft import run_sft

MANIFEST = "MANIFEST.json"



def _define_flags():
    """Flags exist only when this module is the binary (so its functions can be imported)."""
    global _CONFIG, _WORKDIR, _OUT
    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "An LM sweep config with warm_start_step "
        "(experiments/configs/sweep_lm.py:learn)")
    _WORKDIR = flags.DEFINE_string("workdir", None, "The SFT run's directory.")
    _OUT = flags.DEFINE_string("out", None, "Where the shipped checkpoint goes (replaced).")


def file_hashes(root: str) -> dict[str, str]:
    """{path relative to root: sha256} of every file under root except the manifest."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            rel = os.path.relpath(path, root)
            if rel == MANIFEST:
                continue
            with open(path, "rb") as f:
                out[rel.replace(os.sep, "/")] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def make(c, workdir: str, out: str, command: str) -> dict:
    step = int(c.warm_start_step)
    run = config_lib.RunConfig.from_config(c.run)
    sft = dataclasses.replace(run.sft, checkpoint_every=step)
    config = dataclasses.replace(run, init_from="", sft=sft,
                                 keep_checkpoints=run.sft.steps // step + 1)
    if run.sft.steps % step:
        raise ValueError(f"warm_start_step={step} must divide sft.steps={run.sft.steps}")
    run_sft(config, workdir, devices=jax.local_devices())
    comps = components.build_sft(config)
    with ckpt_lib.make_manager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR),
                               max_to_keep=None) as m:
        _, items = ckpt_lib.restore(m, {"params": comps.init_params}, step=step)
    params = items["params"]
    if os.path.exists(out):
        shutil.rmtree(out)
    meta = {"kind": "warm_start", "sft_step": step, "sft_steps": run.sft.steps}
    with ckpt_lib.make_manager(os.path.join(out, ckpt_lib.CHECKPOINT_DIR)) as m:
        ckpt_lib.save(m, step, {"params": params}, meta=meta)
    # Evaluate through the GRPO loader, the path the sweep takes.
    grpo = components.build_grpo(dataclasses.replace(run, init_from=out))
    heldout = grpo.evaluator(grpo.init_params)
    manifest = {
        "what": f"SFT step {step} of {run.sft.steps} ({run.task.name} {dict(run.task.kwargs)}, "
                f"model {run.model.preset}, {models.param_count(params)} params); params only",
        "command": command,
        "params_digest": ckpt_lib.params_digest(params),
        "heldout": {k: float(v) for k, v in heldout.items()},
        "heldout_problems": run.eval.num_problems,
        "sft_config": config.record("sft"),
        "machine": workdir_lib.machine(),
        "files": file_hashes(out)}
    files.write_json_atomic(os.path.join(out, MANIFEST), manifest)
    return manifest


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c = _CONFIG.value
    if c is None or not _WORKDIR.value or not _OUT.value or "warm_start_step" not in c:
        raise app.UsageError("--config (with warm_start_step), --workdir and --out are required")
    workdir_lib.quiet_orbax()
    command = "python -m experiments.warm_start " + " ".join(sys.argv[1:])
    m = make(c, _WORKDIR.value, _OUT.value, command)
    print(json.dumps({k: m[k] for k in ("what", "params_digest", "heldout")}, indent=1))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
